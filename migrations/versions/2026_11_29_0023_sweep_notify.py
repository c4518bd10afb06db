"""sweep notify: webhooks.sweep_id (a sweep's own webhook), webhook_deliveries.sweep_id

A sweep whose base spec has ``notify`` gets one webhook (``webhooks.sweep_id``, deleted with
the sweep) and one delivery when its last member finishes (``webhook_deliveries.sweep_id``,
unique per subscription and event); see ``app.sweep_notify``.

Revision ID: 0023_sweep_notify
Revises: 0022_sweep_launch
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_sweep_notify"
down_revision: str | None = "0022_sweep_launch"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(36), nullable=True))
        batch.create_foreign_key(op.f("fk_webhooks_sweep_id_sweeps"), "sweeps", ["sweep_id"],
                                 ["id"], ondelete="CASCADE")
        batch.create_index(op.f("ix_webhooks_sweep_id"), ["sweep_id"])
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(36), nullable=True))
        batch.create_index("ix_webhook_deliveries_webhook_id_sweep_id_event",
                           ["webhook_id", "sweep_id", "event"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_index("ix_webhook_deliveries_webhook_id_sweep_id_event")
        batch.drop_column("sweep_id")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_index(op.f("ix_webhooks_sweep_id"))
        batch.drop_constraint(op.f("fk_webhooks_sweep_id_sweeps"), type_="foreignkey")
        batch.drop_column("sweep_id")
