"""Every query lives here. Repositories never commit: their callers own the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from app.models import (
    DiagnosticReportRow,
    EpochMetric,
    HistoryChunk,
    HistoryKey,
    HistoryRollup,
    Job,
    JobEvent,
    utcnow,
)

__all__ = [
    "Claim",
    "EventRepository",
    "HistoryRepository",
    "JobLostError",
    "JobRepository",
    "ReportRepository",
    "SystemRepository",
]


@dataclass(frozen=True)
class Claim:
    """Which run of a job a worker is doing: its fencing token.

    The reaper may give a silent worker's job to another worker while the first is in fact
    still alive (a network partition, a frozen VM). Every write of a run is conditional on
    the job still being ``running`` with this claim, and takes the job's row lock first, so
    a stale run can never add rows to the history of the run that replaced it.
    """

    worker_id: str
    attempt: int


class JobLostError(RuntimeError):
    """The job is no longer running under this worker's claim (re-queued, finished)."""


def owned_by(claim: Claim) -> list[ColumnElement[bool]]:
    return [Job.status == "running", Job.attempts == claim.attempt,
            Job.worker_id == claim.worker_id]


def db_now(session: Session) -> Any:
    """The time to stamp heartbeats with, by the database's clock: PostgreSQL's own (workers
    on several machines compare their stamps, and their clocks may disagree); SQLite is a
    file on this machine, whose clock is therefore the database's."""
    if session.get_bind().dialect.name == "postgresql":
        return func.statement_timestamp()
    return utcnow()


# jobs.enqueued_at of a queued job a worker left for later (its tenant's running quota is
# used up): the sweeper keeps handing it out until one starts it (app.quotas)
DEFERRED = datetime(1970, 1, 1, tzinfo=UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; they are stored in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id)

    def refresh(self, job: Job) -> Job:
        self.session.refresh(job)
        return job

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        return job

    def by_idempotency_key(self, key: str) -> Job | None:
        return self.session.scalars(select(Job).where(Job.idempotency_key == key)).first()

    def page(
        self, *, limit: int, statuses: Sequence[str] = (), verdicts: Sequence[str] = (),
        parent_id: str | None = None, after: tuple[datetime, str] | None = None,
        tenant: str | None = None,
    ) -> list[Job]:
        """Newest first; ``after`` = (created_at, id) of the last item of the previous page;
        ``tenant``: only that tenant's jobs (None: everyone's)."""
        query = select(Job)
        if tenant is not None:
            query = query.where(Job.tenant == tenant)
        if statuses:
            query = query.where(Job.status.in_(statuses))
        if verdicts:
            query = query.where(Job.verdict.in_(verdicts))
        if parent_id is not None:
            query = query.where(Job.parent_id == parent_id)
        if after is not None:
            created, last_id = after
            query = query.where(
                or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        return list(self.session.scalars(query))

    def count_of_tenant(self, tenant: str, status: str) -> int:
        """How many of ``tenant``'s jobs are in ``status`` (index ix_jobs_tenant_status)."""
        return int(self.session.scalar(select(func.count()).select_from(Job)
                                       .where(Job.tenant == tenant, Job.status == status)) or 0)

    def defer(self, job_id: str) -> None:
        """Leave a queued job for later (a tenant's running quota): it is marked
        :data:`DEFERRED`, which :meth:`mark_enqueued` keeps, so the sweeper sends it to the
        executor again at every pass (:meth:`deferred`) until a worker starts it."""
        self.session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued")
            .values(enqueued_at=DEFERRED).execution_options(synchronize_session=False))

    def flag_cancel(self, job_id: str) -> bool:
        """Set the cancel flag of a running job; False if it is not running or already set."""
        result = self.session.execute(
            update(Job).where(Job.id == job_id, Job.status == "running",
                              Job.cancel_requested.is_(False))
            .values(cancel_requested=True).execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def mark_enqueued(self, job_id: str) -> None:
        """Record that the executor accepted the queued job's id (see app.dispatch)."""
        self.session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued",
                              or_(Job.enqueued_at.is_(None), Job.enqueued_at != DEFERRED))
            .values(enqueued_at=utcnow()).execution_options(synchronize_session=False)
        )

    def record_progress(self, job_id: str, *, steps_completed: int, latest: dict[str, Any] | None,
                        first_non_finite: dict[str, Any] | None, claim: Claim | None = None
                        ) -> bool:
        """Progress + heartbeat; True when the job should stop (cancel flag, or not running).

        With ``claim``, raises :class:`JobLostError` unless the job still runs under it; call
        it before writing anything else in the transaction (it takes the row lock).
        """
        values: dict[str, Any] = {"steps_completed": steps_completed,
                                  "heartbeat_at": db_now(self.session)}
        if latest is not None:
            values["latest"] = latest
        if first_non_finite is not None:
            values["first_non_finite"] = first_non_finite
        result = self.session.execute(
            update(Job).where(Job.id == job_id, *(owned_by(claim) if claim else []))
            .values(**values).execution_options(synchronize_session=False)
        )
        if claim is not None and not result.rowcount:  # type: ignore[attr-defined]
            raise JobLostError(job_id)
        row = self.session.execute(
            select(Job.cancel_requested, Job.status).where(Job.id == job_id)).first()
        return row is None or bool(row[0]) or row[1] != "running"

    def heartbeat(self, job_id: str, claim: Claim) -> bool:
        """Stamp the heartbeat of a job running under ``claim``; False if it no longer is."""
        result = self.session.execute(
            update(Job).where(Job.id == job_id, *owned_by(claim))
            .values(heartbeat_at=db_now(self.session))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def clock(self) -> datetime:
        """The current time by the clock heartbeats are stamped with (see :func:`db_now`)."""
        if self.session.get_bind().dialect.name == "postgresql":
            value: datetime = self.session.execute(select(func.statement_timestamp())).scalar_one()
            return value
        return utcnow()

    def unsent(self, executor: str, created_before: datetime, limit: int = 500) -> list[str]:
        """Queued jobs of ``executor`` whose id no executor accepted yet (the API stopped
        between commit and send, or the broker was down), created before ``created_before``."""
        return list(self.session.scalars(
            select(Job.id).where(Job.status == "queued", Job.executor == executor,
                                 Job.enqueued_at.is_(None), Job.created_at < created_before)
            .order_by(Job.created_at, Job.id).limit(limit)
        ))

    def deferred(self, executor: str, limit: int = 500) -> list[str]:
        """Queued jobs of ``executor`` that a worker left for later (:meth:`defer`), oldest
        first: the sweeper hands them out again."""
        return list(self.session.scalars(
            select(Job.id).where(Job.status == "queued", Job.executor == executor,
                                 Job.enqueued_at == DEFERRED)
            .order_by(Job.created_at, Job.id).limit(limit)
        ))

    def status_of(self, job_id: str) -> str | None:
        return self.session.scalar(select(Job.status).where(Job.id == job_id))

    def delete(self, job_id: str, *, statuses: Iterable[str]) -> bool:
        """Delete a job in one of ``statuses`` and (by cascade) everything recorded for it."""
        result = self.session.execute(
            delete(Job).where(Job.id == job_id, Job.status.in_(list(statuses)))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def queued_ids(self, executor: str | None = None) -> list[str]:
        query = select(Job.id).where(Job.status == "queued")
        if executor is not None:
            query = query.where(Job.executor == executor)
        return list(self.session.scalars(query.order_by(Job.created_at, Job.id)))

    def running(self, executor: str | None = None) -> list[Job]:
        query = select(Job).where(Job.status == "running")
        if executor is not None:
            query = query.where(Job.executor == executor)
        return list(self.session.scalars(query))

    def next_event_seq(self, job_id: str) -> int | None:
        """Reserve the job's next event number (the row lock orders concurrent writers)."""
        return self.session.scalar(
            update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1)
            .returning(Job.event_seq)
        )


class SystemRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        value = self.session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return None if value is None else str(value)


class EventRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def append(self, job_id: str, type_: str, data: dict[str, Any]) -> int | None:
        seq = JobRepository(self.session).next_event_seq(job_id)
        if seq is None:
            return None
        self.session.execute(insert(JobEvent).values(
            job_id=job_id, seq=seq, type=type_, data=data, created_at=utcnow()))
        return seq

    def of_type(self, job_id: str, type_: str) -> list[JobEvent]:
        """The job's events of one type, oldest first (e.g. the monitor's ``alert`` events)."""
        return list(self.session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == type_)
            .order_by(JobEvent.seq)
        ))

    def since(self, job_id: str, after_seq: int, limit: int = 500) -> list[JobEvent]:
        return list(self.session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
            .order_by(JobEvent.seq).limit(limit)
        ))


class ReportRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: str) -> DiagnosticReportRow | None:
        return self.session.get(DiagnosticReportRow, job_id)

    def put(self, job_id: str, report: dict[str, Any]) -> None:
        existing = self.get(job_id)
        if existing is None:
            self.session.add(DiagnosticReportRow(job_id=job_id, report=report, created_at=utcnow()))
        else:
            existing.report = report
            existing.created_at = utcnow()
        self.session.flush()


class HistoryRepository:
    """A job's history rows: its key, chunks, rollups and epoch figures (bytes are opaque
    here; :mod:`app.history_store` owns them)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # ---- keys ----
    def key_of(self, job_id: str) -> tuple[int, int] | None:
        """(history key, layers) of a job that has stored steps."""
        row = self.session.execute(select(HistoryKey.key, HistoryKey.n_layers)
                                   .where(HistoryKey.job_id == job_id)).first()
        return None if row is None else (int(row[0]), int(row[1]))

    def ensure_key(self, job_id: str, n_layers: int) -> int:
        """The job's history key, created on its first flush."""
        found = self.key_of(job_id)
        if found is not None:
            return found[0]
        key = self.session.scalar(insert(HistoryKey).values(job_id=job_id, n_layers=n_layers)
                                  .returning(HistoryKey.key))
        assert key is not None
        return int(key)

    # ---- writes ----
    def insert_chunk(self, key: int, first_step: int, last_step: int, n_steps: int,
                     data: bytes) -> None:
        self.session.connection().execute(insert(HistoryChunk), [{
            "job_key": key, "first_step": first_step, "last_step": last_step,
            "n_steps": n_steps, "data": data}])

    def insert_rollups(self, key: int, rows: Sequence[tuple[int, int, bytes]]) -> None:
        """Rows of (level, block, data)."""
        if rows:
            self.session.connection().execute(insert(HistoryRollup), [
                {"job_key": key, "level": level, "block": block, "data": data}
                for level, block, data in rows])

    def insert_epochs(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.connection().execute(insert(EpochMetric), rows)

    def delete_history(self, job_id: str) -> None:
        """Everything a run recorded (steps, epochs, rollups, report); not its events."""
        keys = select(HistoryKey.key).where(HistoryKey.job_id == job_id).scalar_subquery()
        for table in (HistoryChunk, HistoryRollup):
            self.session.execute(delete(table).where(table.job_key == keys)
                                 .execution_options(synchronize_session=False))
        for model in (HistoryKey, EpochMetric, DiagnosticReportRow):
            self.session.execute(delete(model).where(model.job_id == job_id)
                                 .execution_options(synchronize_session=False))

    # ---- reads ----
    def _from_chunk_holding(self, key: int, step: int) -> ColumnElement[bool]:
        """Chunks from the one holding ``step`` (or the first after it) on: an index seek."""
        holder = (select(func.max(HistoryChunk.first_step))
                  .where(HistoryChunk.job_key == key, HistoryChunk.first_step <= step)
                  .scalar_subquery())
        return HistoryChunk.first_step >= func.coalesce(holder, step)

    def chunks(self, key: int, lo: int, hi: int) -> list[tuple[int, int, int, bytes]]:
        """(first step, last step, steps, data) of the chunks overlapping steps [lo, hi]."""
        rows = self.session.execute(
            select(HistoryChunk.first_step, HistoryChunk.last_step, HistoryChunk.n_steps,
                   HistoryChunk.data)
            .where(HistoryChunk.job_key == key, self._from_chunk_holding(key, lo),
                   HistoryChunk.first_step <= hi, HistoryChunk.last_step >= lo)
            .order_by(HistoryChunk.first_step)).all()
        return [(int(a), int(b), int(n), bytes(d)) for a, b, n, d in rows]

    def chunk_spans(self, key: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(first step, last step, steps) of the chunks overlapping steps [lo, hi]."""
        rows = self.session.execute(
            select(HistoryChunk.first_step, HistoryChunk.last_step, HistoryChunk.n_steps)
            .where(HistoryChunk.job_key == key, self._from_chunk_holding(key, lo),
                   HistoryChunk.first_step <= hi, HistoryChunk.last_step >= lo)
            .order_by(HistoryChunk.first_step)).all()
        return [(int(a), int(b), int(n)) for a, b, n in rows]

    def chunk_totals(self, key: int, lo: int, hi: int) -> tuple[int | None, int | None, int]:
        """(first step, last step, steps) of the chunks lying wholly inside steps [lo, hi]."""
        row = self.session.execute(
            select(func.min(HistoryChunk.first_step), func.max(HistoryChunk.last_step),
                   func.coalesce(func.sum(HistoryChunk.n_steps), 0))
            .where(HistoryChunk.job_key == key, HistoryChunk.first_step >= lo,
                   HistoryChunk.last_step <= hi)).one()
        first, last, count = row
        return (None if first is None else int(first), None if last is None else int(last),
                int(count))

    def rolled_until(self, key: int) -> dict[int, int]:
        """Per stored level: the last block (not step) covered."""
        rows = self.session.execute(
            select(HistoryRollup.level, func.max(HistoryRollup.block))
            .where(HistoryRollup.job_key == key).group_by(HistoryRollup.level)).all()
        return {int(level): int(block) for level, block in rows}

    def rollups(self, key: int, runs: Sequence[tuple[int, int, int]]
                ) -> list[tuple[int, int, bytes]]:
        """(level, block, data) for ``runs`` of (level, first block, last block)."""
        out: list[tuple[int, int, bytes]] = []
        for level, lo, hi in runs:  # one index range scan per run
            out.extend((int(a), int(b), bytes(c)) for a, b, c in self.session.execute(
                select(HistoryRollup.level, HistoryRollup.block, HistoryRollup.data)
                .where(HistoryRollup.job_key == key, HistoryRollup.level == level,
                       HistoryRollup.block.between(lo, hi))
                .order_by(HistoryRollup.block)).all())
        return out

    def epochs(self, job_id: str) -> list[EpochMetric]:
        return list(self.session.scalars(
            select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)))
