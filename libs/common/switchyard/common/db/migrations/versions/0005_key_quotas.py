"""api_keys: per-key quotas (requests per second, concurrent streams, tokens per minute)

NULL keeps the key's tier's limit (ApiSettings.tier_quotas), so existing keys are unchanged.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("rps", sa.Float, nullable=True))
    op.add_column("api_keys", sa.Column("max_streams", sa.Integer, nullable=True))
    op.add_column("api_keys", sa.Column("tpm", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "tpm")
    op.drop_column("api_keys", "max_streams")
    op.drop_column("api_keys", "rps")
