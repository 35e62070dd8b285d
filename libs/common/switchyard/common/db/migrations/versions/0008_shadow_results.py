"""shadow_results: one row per shadow case compared (no request content: numbers only)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_results",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("case_id", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("candidate", sa.String(128), nullable=False),
        sa.Column("domain", sa.String(16), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=True),
        # compared | candidate_failed (then error: the candidate's error kind, never its text)
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("primary_ms", sa.Float(), nullable=False),
        sa.Column("candidate_ms", sa.Float(), nullable=True),
        sa.Column("top1_agreement", sa.Float(), nullable=True),
        sa.Column("topk_overlap", sa.Float(), nullable=True),
        sa.Column("text_similarity", sa.Float(), nullable=True),
        sa.Column("primary_tokens", sa.Integer(), nullable=True),
        sa.Column("candidate_tokens", sa.Integer(), nullable=True),
        sa.Column("primary_ttft_ms", sa.Float(), nullable=True),
        sa.Column("candidate_ttft_ms", sa.Float(), nullable=True),
    )
    op.create_index("ix_shadow_results_model_created", "shadow_results", ["model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_results_model_created", "shadow_results")
    op.drop_table("shadow_results")
