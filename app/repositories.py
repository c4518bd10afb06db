"""Every query lives here (a job's history rows in :mod:`app.history_repository`, whose
:class:`HistoryRepository` is re-exported). Repositories never commit: their callers own the
transaction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from app.history_repository import HistoryRepository
from app.models import DiagnosticReportRow, Job, JobEvent, utcnow

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

# ids per `IN (...)` of a statement over many jobs (SQLite allows 32,766 parameters)
ID_BATCH = 500


def id_batches(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in slices of at most :data:`ID_BATCH`, one per statement."""
    for start in range(0, len(ids), ID_BATCH):
        yield ids[start:start + ID_BATCH]


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
        tenant: str | None = None, sweep_members: bool = True,
    ) -> list[Job]:
        """Newest first; ``after`` = (created_at, id) of the last item of the previous page;
        ``tenant``: only that tenant's jobs (None: everyone's); ``sweep_members=False``: none
        that is a sweep's member."""
        query = select(Job)
        if tenant is not None:
            query = query.where(Job.tenant == tenant)
        if statuses:
            query = query.where(Job.status.in_(statuses))
        if verdicts:
            query = query.where(Job.verdict.in_(verdicts))
        if parent_id is not None:
            query = query.where(Job.parent_id == parent_id)
        if not sweep_members:
            query = query.where(Job.parent_sweep_id.is_(None))
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

    def mark_enqueued(self, *job_ids: str) -> None:
        """Record that the executor accepted the queued jobs' ids (see app.dispatch): one
        statement per :data:`ID_BATCH` ids, however many (a sweep's members)."""
        now = utcnow()
        for batch in id_batches(job_ids):
            self.session.execute(
                update(Job).where(Job.id.in_(batch),
                                  Job.status == "queued",
                                  or_(Job.enqueued_at.is_(None), Job.enqueued_at != DEFERRED))
                .values(enqueued_at=now).execution_options(synchronize_session=False)
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

    def append_many(self, events: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """:meth:`append` for many jobs, one event each (``(job_id, type, data)``): their
        numbers reserved in one UPDATE per :data:`ID_BATCH` jobs, the events in one INSERT."""
        ids = [job_id for job_id, _, _ in events]
        seqs: dict[str, int] = {}
        for batch in id_batches(ids):
            result = self.session.execute(
                update(Job).where(Job.id.in_(batch))
                .values(event_seq=Job.event_seq + 1).returning(Job.id, Job.event_seq)
                .execution_options(synchronize_session=False))
            seqs.update((job_id, seq) for job_id, seq in result)
        now = utcnow()
        rows = [{"job_id": job_id, "seq": seqs[job_id], "type": type_, "data": data,
                 "created_at": now} for job_id, type_, data in events if job_id in seqs]
        if rows:
            self.session.execute(insert(JobEvent), rows)

    def append_first(self, events: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """The first event (``seq`` 1) of each of many jobs just inserted with ``event_seq``
        1, as ``(job_id, type, data)``: one INSERT for all of them."""
        now = utcnow()
        self.session.execute(insert(JobEvent), [
            {"job_id": job_id, "seq": 1, "type": type_, "data": data, "created_at": now}
            for job_id, type_, data in events])

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
