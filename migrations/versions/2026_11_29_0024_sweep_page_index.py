"""sweep page index: sweeps (created_at, id), as jobs have

``GET /v1/sweeps`` lists newest first and pages by ``(created_at, id)`` (``app.sweeps``):
the composite index serves that order and the cursor's row comparison, as
``ix_jobs_created_at_id`` does for ``GET /v1/jobs``.

Revision ID: 0024_sweep_page_index
Revises: 0023_sweep_notify
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0024_sweep_page_index"
down_revision: str | None = "0023_sweep_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sweeps_created_at_id", "sweeps", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_sweeps_created_at_id", table_name="sweeps")
