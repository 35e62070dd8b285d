"""jobs: sealed (encrypted) engine input and result, purge bookkeeping for retention

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The engine's input, AES-256-GCM with a key id (switchyard.common.payload_codec), when it is
    # not the readable (PII-redacted) `input`; NULL otherwise, and once the job has ended.
    op.add_column("jobs", sa.Column("input_sealed", sa.LargeBinary(), nullable=True))
    # The engine's answer, encrypted, where the readable `result` is its PII-redacted copy (LLM jobs):
    # what the job's own tenant reads back.
    op.add_column("jobs", sa.Column("result_sealed", sa.LargeBinary(), nullable=True))
    op.add_column("jobs", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_purge_due", "jobs", ["finished_at"], postgresql_where=sa.text("purged_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_purge_due", "jobs")
    op.drop_column("jobs", "purged_at")
    op.drop_column("jobs", "result_sealed")
    op.drop_column("jobs", "input_sealed")
