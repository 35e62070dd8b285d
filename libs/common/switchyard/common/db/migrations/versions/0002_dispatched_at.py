"""jobs.dispatched_at: the outbox marker

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    # Jobs accepted before this migration already have workflows.
    op.execute("UPDATE jobs SET dispatched_at = created_at")
    op.create_index("ix_jobs_undispatched", "jobs", ["created_at"], postgresql_where=sa.text("dispatched_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_undispatched", "jobs")
    op.drop_column("jobs", "dispatched_at")
