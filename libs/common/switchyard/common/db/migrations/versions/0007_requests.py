"""requests: one row per API request (request log, usage); jobs: the request that created them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("family", sa.String(16), nullable=False),
        sa.Column("route", sa.String(128), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        # HTTP status code, or the gRPC code name (v2_grpc).
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=True),
        sa.Column("key_id", UUID(as_uuid=True), nullable=True),
        sa.Column("model", sa.String(128), nullable=False, server_default=""),
        sa.Column("endpoint", sa.String(64), nullable=True),
        # Numbers and switches only (max_tokens, temperature, ...): never prompt or image text.
        sa.Column("params", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("items", sa.Integer(), nullable=True),
        sa.Column("queue_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("engine_ms", sa.Float(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("overhead_ms", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=True),
        sa.Column("priority", sa.SmallInteger(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False, server_default=""),
        sa.Column("job_id", UUID(as_uuid=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_requests_created", "requests", ["created_at"])
    op.create_index("ix_requests_tenant_created", "requests", ["tenant", "created_at"])
    # One row per job: the API's insert and the job's end (whichever comes first) meet on it.
    op.create_index("ux_requests_job", "requests", ["job_id"], unique=True, postgresql_where=sa.text("job_id IS NOT NULL"))
    op.add_column("jobs", sa.Column("request_id", sa.String(128), nullable=True))
    op.add_column("jobs", sa.Column("request_family", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "request_family")
    op.drop_column("jobs", "request_id")
    op.drop_index("ux_requests_job", "requests")
    op.drop_index("ix_requests_tenant_created", "requests")
    op.drop_index("ix_requests_created", "requests")
    op.drop_table("requests")
