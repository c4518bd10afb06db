"""Tables. Alembic migrations (``migrations/``) are the only way they are created or changed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
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
    "ApiKey",
    "Dataset",
    "DiagnosticReportRow",
    "EpochMetric",
    "HistoryChunk",
    "HistoryKey",
    "HistoryRollup",
    "Job",
    "JobEvent",
    "MetricCounter",
    "Sweep",
    "SweepMemberRow",
    "TenantQuota",
    "Webhook",
    "WebhookDelivery",
    "utcnow",
]

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(Base):
    """One training job; ``status`` moves only along :data:`app.lifecycle.TRANSITIONS`."""

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
    # X-Request-ID of the request that created the job (app.correlation)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # a member of a sweep (app.sweeps): trained batched with its siblings of one architecture
    parent_sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    # the uploaded data set it trains on (spec data.source "uploaded"): a queued or running
    # job keeps its data set from being deleted. No foreign key: a finished job keeps the id.
    dataset_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # the tenant whose key created the job (app.tenancy); None: the admin's
    tenant: Mapped[str | None] = mapped_column(String(100))
    # launched like a sweep's member (POST /v1/sweeps/{id}/launch): {"sweep_id", "member",
    # "job_id", "values", "recommended", "spec_patch"}; a plain JSON record, no foreign key,
    # so the job keeps it after the sweep is deleted. The job is not a member.
    launched_from: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_tenant_status", "tenant", "status"),
    )


class HistoryKey(Base):
    """A job's history is stored under this small integer (not the UUID in every row)."""

    __tablename__ = "history_keys"

    key: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    n_layers: Mapped[int] = mapped_column(SmallInteger)


class HistoryChunk(Base):
    """Every series of a job over steps ``first_step..last_step``: one flush of its worker.

    ``data`` is written and read only by :mod:`app.history_store` (compact columns, NaN and
    +-Inf bit for bit). A rowid table on SQLite (migration 0020): its rows are large, and
    finding them by step must not read them.
    """

    __tablename__ = "history_chunks"

    job_key: Mapped[int] = mapped_column(
        ForeignKey("history_keys.key", ondelete="CASCADE"), primary_key=True
    )
    first_step: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_step: Mapped[int] = mapped_column(Integer)
    n_steps: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


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


class HistoryRollup(Base):
    """Every series of a job summarised over the aligned block ``block`` of ``2**level`` steps
    (count, min, max, first non-finite point): a downsampled history of a million steps is
    answered from a few hundred of these rows. ``data``: see :mod:`app.history_store`.
    """

    __tablename__ = "history_rollups"

    job_key: Mapped[int] = mapped_column(
        ForeignKey("history_keys.key", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
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


class Webhook(Base):
    """A webhook subscription: where to POST which events, signed with ``secret``.

    ``job_id`` is null for a subscription to every job (``POST /v1/webhooks``) and set for a
    job's own ``notify`` endpoint (from its spec; deleted with the job). ``sweep_id`` is set
    for a sweep's own ``notify`` endpoint (from its base spec; deleted with the sweep; see
    :mod:`app.sweep_notify`).
    """

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONType)
    secret: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)


class WebhookDelivery(Base):
    """One event for one subscription, delivered at least once (app.delivery).

    ``payload`` is the exact body sent (every attempt sends the same bytes under the same
    ``message_id``); ``attempt_log`` lists each attempt: time, status code, error, duration.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(40), unique=True)
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(36))
    payload: Mapped[str] = mapped_column(Text)
    # pending | succeeded | failed ("state", not "status": only app.lifecycle writes statuses)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the sweep a sweep event is about (``job_id`` null then); no foreign key, as ``job_id``
    sweep_id: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_id_job_id_event", "webhook_id", "job_id", "event",
              unique=True),
        # at most one delivery of a sweep's event per subscription (app.sweep_notify)
        Index("ix_webhook_deliveries_webhook_id_sweep_id_event", "webhook_id", "sweep_id",
              "event", unique=True),
    )


class MetricCounter(Base):
    """A monotonic counter pushed through the database by any process (app.counters).

    Each process adds to its own ``shard`` (no contention between workers); a scrape sums
    the shards. ``labels`` is the Prometheus label set, e.g. ``outcome="succeeded"``.
    """

    __tablename__ = "metric_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(200), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    value: Mapped[float] = mapped_column(Double)


class Sweep(Base):
    """A sweep: a base spec and axes; its members are jobs (``jobs.parent_sweep_id``)."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    axes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    member_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    tenant: Mapped[str | None] = mapped_column(String(100), index=True)
    # Idempotency-Key of the request that created it, scoped as jobs' (app.submission)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)

    # GET /v1/sweeps pages newest first by (created_at, id), as GET /v1/jobs does
    __table_args__ = (Index("ix_sweeps_created_at_id", "created_at", "id"),)


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


class Dataset(Base):
    """An uploaded data set; its arrays are the blob ``blob_key`` (a normalised ``.npz``)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(64), index=True)  # None: the admin's
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(8))  # what was uploaded: csv | npz | npy
    n_samples: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    n_classes: Mapped[int | None] = mapped_column(Integer)
    n_targets: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))  # of the uploaded values, e.g. float64
    feature_names: Mapped[list[str] | None] = mapped_column(JSONType)
    target_name: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))  # of the uploaded bytes
    upload_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_datasets_created_at_id", "created_at", "id"),)
class ApiKey(Base):
    """A tenant's API key (app.keys): only its scrypt hash is stored, never the key."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public, in the key
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(200))  # scrypt$n$r$p$salt$hash (base64)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TenantQuota(Base):
    """A tenant's own quotas (``gradwatch tenants quota``); a null column: the setting's."""

    __tablename__ = "tenant_quotas"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
