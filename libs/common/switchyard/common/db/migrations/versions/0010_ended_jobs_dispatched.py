"""jobs.dispatched_at on ended jobs: an ended job leaves the outbox's index

A completion the API runs itself (fast start) ends without a workflow; its row's end now sets
dispatched_at, so the outbox's partial index (``dispatched_at IS NULL``) holds only jobs still waiting
for a workflow. This marks the ended rows left without it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE jobs SET dispatched_at = coalesce(finished_at, updated_at) "
               "WHERE dispatched_at IS NULL AND status IN ('succeeded', 'failed', 'cancelled')")


def downgrade() -> None:
    pass  # nothing to undo: the marker is right either way
