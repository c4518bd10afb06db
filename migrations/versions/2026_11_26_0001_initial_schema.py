"""initial schema: jobs, step/layer histories, rollups, events, diagnostic reports

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _job_fk() -> sa.ForeignKey:
    return sa.ForeignKey("jobs.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("parent_id", sa.String(36), nullable=True),
        sa.Column("repair", JSONType, nullable=True),
        sa.Column("executor", sa.String(16), nullable=False),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("enqueued_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("steps_completed", sa.Integer(), nullable=False),
        sa.Column("latest", JSONType, nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("stop_reason", sa.String(16), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("first_non_finite", JSONType, nullable=True),
        sa.Column("runtime_seconds", sa.Double(), nullable=True),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["jobs.id"], name=op.f("fk_jobs_parent_id_jobs"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index(op.f("ix_jobs_parent_id"), "jobs", ["parent_id"])
    op.create_index(op.f("ix_jobs_verdict"), "jobs", ["verdict"])
    op.create_index("ix_jobs_created_at_id", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])

    op.create_table(
        "step_metrics",
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Double(), nullable=False),
        sa.Column("grad_norm", sa.Double(), nullable=False),
        sa.Column("clipped_grad_norm", sa.Double(), nullable=False),
        sa.Column("lr", sa.Double(), nullable=False),
        sa.Column("clipped", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "step", name=op.f("pk_step_metrics")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "layer_stats",
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("grad_norm", sa.Double(), nullable=False),
        sa.Column("weight_grad_norm", sa.Double(), nullable=False),
        sa.Column("weight_norm", sa.Double(), nullable=False),
        sa.Column("update_norm", sa.Double(), nullable=False),
        sa.Column("act_mean", sa.Double(), nullable=True),
        sa.Column("act_std", sa.Double(), nullable=True),
        sa.Column("dead_fraction", sa.Double(), nullable=True),
        sa.Column("saturated_fraction", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "layer", "step", name=op.f("pk_layer_stats")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "epoch_metrics",
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Double(), nullable=False),
        sa.Column("val_loss", sa.Double(), nullable=True),
        sa.Column("val_accuracy", sa.Double(), nullable=True),
        sa.Column("train_accuracy", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "epoch", name=op.f("pk_epoch_metrics")),
    )
    op.create_table(
        "series_rollups",
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("block", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "level", "layer", "block",
                                name=op.f("pk_series_rollups")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", JSONType, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_job_events")),
    )
    op.create_table(
        "diagnostic_reports",
        sa.Column("job_id", sa.String(36), _job_fk(), nullable=False),
        sa.Column("report", JSONType, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_diagnostic_reports")),
    )


def downgrade() -> None:
    op.drop_table("diagnostic_reports")
    op.drop_table("job_events")
    op.drop_table("series_rollups")
    op.drop_table("epoch_metrics")
    op.drop_table("layer_stats")
    op.drop_table("step_metrics")
    op.drop_index("ix_jobs_status_created_at", table_name="jobs")
    op.drop_index("ix_jobs_created_at_id", table_name="jobs")
    op.drop_index(op.f("ix_jobs_verdict"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_parent_id"), table_name="jobs")
    op.drop_table("jobs")
