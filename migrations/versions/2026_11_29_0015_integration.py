"""integration: webhooks and their deliveries, metric counters, jobs.request_id

Revision ID: 0015_integration
Revises: 0003_columnar
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_integration"
down_revision: str | None = "0003_columnar"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_id", sa.String(128), nullable=True))
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", JSONType, nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("description", sa.String(200), nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("tenant", sa.String(100), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_webhooks_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    op.create_index(op.f("ix_webhooks_job_id"), "webhooks", ["job_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("webhook_id", sa.String(36), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("locked_until", TS, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attempt_log", JSONType, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"],
                                name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("message_id", name=op.f("uq_webhook_deliveries_message_id")),
    )
    op.create_index(op.f("ix_webhook_deliveries_webhook_id"), "webhook_deliveries",
                    ["webhook_id"])
    op.create_index("ix_webhook_deliveries_state_next_attempt_at", "webhook_deliveries",
                    ["state", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_webhook_id_job_id_event", "webhook_deliveries",
                    ["webhook_id", "job_id", "event"], unique=True)
    op.create_table(
        "metric_counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("labels", sa.String(200), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", "labels", "shard", name=op.f("pk_metric_counters")),
    )


def downgrade() -> None:
    op.drop_table("metric_counters")
    op.drop_index("ix_webhook_deliveries_webhook_id_job_id_event", "webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_state_next_attempt_at", "webhook_deliveries")
    op.drop_index(op.f("ix_webhook_deliveries_webhook_id"), "webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index(op.f("ix_webhooks_job_id"), "webhooks")
    op.drop_table("webhooks")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("request_id")
