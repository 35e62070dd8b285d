"""catalog_changes: promotions and rollbacks applied on top of the checked-in catalog

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        # promote | rollback | resume (switchyard.common.shadow.overlay)
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("candidate", sa.String(128), nullable=True),
        # who: the admin key's "tenant/name", or "switchyard (automatic)"
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
    )
    op.create_index("ix_catalog_changes_model", "catalog_changes", ["model", "id"])


def downgrade() -> None:
    op.drop_index("ix_catalog_changes_model", "catalog_changes")
    op.drop_table("catalog_changes")
