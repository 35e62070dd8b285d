"""jobs.model_spec: the catalog entry a job was accepted for

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for jobs accepted before: workers then look the model up in their current catalog.
    op.add_column("jobs", sa.Column("model_spec", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "model_spec")
