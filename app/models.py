"""Tables. Alembic migrations (``migrations/``) are the only way they are created or changed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, NonFiniteFloat

__all__ = [
    "DiagnosticReportRow",
    "EpochMetric",
    "Job",
    "JobEvent",
    "LayerStat",
    "SeriesRollup",
    "StepMetric",
    "Sweep",
    "SweepMemberRow",
    "utcnow",
]

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(Base):
    """One training job; ``status`` moves only along :data:`app.services.TRANSITIONS`."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    spec_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    repair: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    executor: Mapped[str] = mapped_column(String(16))
    worker_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    total_steps: Mapped[int] = mapped_column(Integer)
    steps_completed: Mapped[int] = mapped_column(Integer, default=0)
    latest: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_reason: Mapped[str | None] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    first_non_finite: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    runtime_seconds: Mapped[float | None] = mapped_column(Double)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Starts by a worker; also the fencing token of a run: a worker writes only while the
    # job is still `running` with the attempt it claimed (see JobRepository.owned_by).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # a member of a sweep (app.sweeps): trained batched with its siblings of one architecture
    parent_sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)

    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
    )


class StepMetric(Base):
    """Network-level figures of one optimizer step (norms before/after clipping)."""

    __tablename__ = "step_metrics"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(NonFiniteFloat)
    grad_norm: Mapped[float] = mapped_column(NonFiniteFloat)
    clipped_grad_norm: Mapped[float] = mapped_column(NonFiniteFloat)
    lr: Mapped[float] = mapped_column(NonFiniteFloat)
    clipped: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = ({"sqlite_with_rowid": False},)


class LayerStat(Base):
    """One layer's statistics at one step."""

    __tablename__ = "layer_stats"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    grad_norm: Mapped[float] = mapped_column(NonFiniteFloat)
    weight_grad_norm: Mapped[float] = mapped_column(NonFiniteFloat)
    weight_norm: Mapped[float] = mapped_column(NonFiniteFloat)
    update_norm: Mapped[float] = mapped_column(NonFiniteFloat)
    act_mean: Mapped[float | None] = mapped_column(NonFiniteFloat)
    act_std: Mapped[float | None] = mapped_column(NonFiniteFloat)
    dead_fraction: Mapped[float | None] = mapped_column(NonFiniteFloat)
    saturated_fraction: Mapped[float | None] = mapped_column(NonFiniteFloat)

    __table_args__ = ({"sqlite_with_rowid": False},)


class EpochMetric(Base):
    """End-of-epoch training and validation figures."""

    __tablename__ = "epoch_metrics"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(NonFiniteFloat)
    val_loss: Mapped[float | None] = mapped_column(NonFiniteFloat)
    val_accuracy: Mapped[float | None] = mapped_column(NonFiniteFloat)
    train_accuracy: Mapped[float | None] = mapped_column(NonFiniteFloat)


class SeriesRollup(Base):
    """Summary of one layer's series (or the step metrics) over an aligned block of steps.

    Written by the worker as blocks of ``2**level`` steps complete; a downsampled history of
    a million layer-steps is answered from about a thousand of these rows. ``layer`` is -1
    for the network-level step metrics. ``data`` is a little-endian float64 array of shape
    ``(n_metrics, 7)`` (metrics in the order of ``app.downsampling.LAYER_METRICS`` or
    ``STEP_METRICS``): count, min step, min value, max step, max value, first non-finite step
    and value; a step of -1 means "none". Min and max ignore NaN (a NaN shows through the
    non-finite point). Being binary, it keeps NaN and +-Inf on every database.
    """

    __tablename__ = "series_rollups"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    block: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = ({"sqlite_with_rowid": False},)


class JobEvent(Base):
    """A server-sent event; ``seq`` increases monotonically per job (jobs.event_seq)."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DiagnosticReportRow(Base):
    """The final diagnosis of a job (JSON with non-finite numbers as strings)."""

    __tablename__ = "diagnostic_reports"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    report: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Sweep(Base):
    """A sweep: a base spec and axes; its members are jobs (``jobs.parent_sweep_id``)."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    axes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    member_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class SweepMemberRow(Base):
    """One grid point of a sweep: its axis values, its job, preflight's risk for its spec."""

    __tablename__ = "sweep_members"

    sweep_id: Mapped[str] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    axis_values: Mapped[dict[str, Any]] = mapped_column(JSONType)
    predicted_risk: Mapped[str | None] = mapped_column(String(16))
    first_bad_step: Mapped[int | None] = mapped_column(Integer)
    peak_to_baseline: Mapped[float | None] = mapped_column(NonFiniteFloat)
    final_loss: Mapped[float | None] = mapped_column(NonFiniteFloat)
