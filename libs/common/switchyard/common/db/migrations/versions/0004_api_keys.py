"""api_keys; jobs.tenant, idempotency keys unique per tenant

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.CHAR(64), nullable=False, unique=True),
        sa.Column("scopes", JSONB, nullable=False),
        sa.Column("tier", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_tenant_created", "api_keys", ["tenant", "created_at"])
    # Jobs accepted before keys existed belong to the tenant "default" (visible to admin keys).
    op.add_column("jobs", sa.Column("tenant", sa.String(64), nullable=False, server_default="default"))
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant", "created_at", "id"])
    # 0001's `unique=True` constraint, under PostgreSQL's default name.
    op.drop_constraint("jobs_idempotency_key_key", "jobs", type_="unique")
    op.create_unique_constraint("uq_jobs_tenant_idempotency_key", "jobs", ["tenant", "idempotency_key"])


def downgrade() -> None:
    op.drop_constraint("uq_jobs_tenant_idempotency_key", "jobs", type_="unique")
    op.create_unique_constraint("jobs_idempotency_key_key", "jobs", ["idempotency_key"])
    op.drop_index("ix_jobs_tenant_created", "jobs")
    op.drop_column("jobs", "tenant")
    op.drop_table("api_keys")
