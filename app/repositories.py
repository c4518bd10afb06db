"""Every query lives here. Repositories never commit: their callers own the transaction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from app.db import sqlite_nan
from app.downsampling import LAYER_METRICS, MIN_LEVEL, STEP_METRICS
from app.models import (
    DiagnosticReportRow,
    EpochMetric,
    Job,
    JobEvent,
    LayerStat,
    SeriesRollup,
    StepMetric,
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

# Rows per INSERT batch. executemany binds one row per statement, so SQLite's limit of
# 32,766 bound parameters per statement is never approached; batching bounds memory.
BATCH_ROWS = 2_000

STEP_COLUMNS = ("job_id", "step", "epoch", *STEP_METRICS, "clipped")
LAYER_COLUMNS = ("job_id", "layer", "step", *LAYER_METRICS)

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
    ) -> list[Job]:
        """Newest first; ``after`` = (created_at, id) of the last item of the previous page."""
        query = select(Job)
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
            update(Job).where(Job.id == job_id, Job.status == "queued")
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


def _column_arrays(rows: Sequence[Sequence[Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values (float64, NaN where missing) and presence mask of ``n`` columns of ``rows``."""
    if not rows:
        return np.empty((0, n)), np.empty((0, n), dtype=bool)
    obj = np.array(rows, dtype=object).reshape(len(rows), n)
    present = obj != None  # noqa: E711  (elementwise comparison on an object array)
    values = np.where(present, obj, np.nan).astype(np.float64)
    return values, present


class HistoryRepository:
    """Per-step metrics, per-step-per-layer stats, epoch figures and their rollups."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # ---- writes (batched) ----
    # SQLite: the driver's executemany of one prepared statement. PostgreSQL (psycopg 3):
    # COPY FROM STDIN in binary format, ~4x the rows/s of executemany (bench/README.md).
    def _insert(self, table: Any, columns: Sequence[str], rows: Sequence[tuple[Any, ...]],
                has_nan: np.ndarray | None = None) -> None:
        """Insert tuples in ``columns`` order; ``has_nan[i]`` flags rows holding a NaN."""
        if not rows:
            return
        connection = self.session.connection()
        if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
            self._copy(table, columns, rows)
            return
        if connection.dialect.name == "sqlite":
            # the fast path: the driver's executemany; NaN must be bound as 'NaN' (NonFiniteFloat)
            if has_nan is None or has_nan.any():
                flagged = range(len(rows)) if has_nan is None else np.flatnonzero(has_nan)
                fixed = list(rows)
                for i in flagged:
                    fixed[i] = tuple(sqlite_nan(v) if isinstance(v, float) else v for v in fixed[i])
                rows = fixed
            sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
                   f"VALUES ({', '.join('?' * len(columns))})")
            for i in range(0, len(rows), BATCH_ROWS):
                connection.exec_driver_sql(sql, list(rows[i:i + BATCH_ROWS]))
            return
        self._executemany(table, columns, rows)

    def _executemany(self, table: Any, columns: Sequence[str],
                     rows: Sequence[tuple[Any, ...]]) -> None:
        """The portable path: SQLAlchemy Core executemany in batches."""
        connection = self.session.connection()
        for i in range(0, len(rows), BATCH_ROWS):
            connection.execute(insert(table), [dict(zip(columns, r, strict=True))
                                               for r in rows[i:i + BATCH_ROWS]])

    def _copy(self, table: Any, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """COPY the rows in on the session's own connection, inside its transaction.

        Binary COPY carries float8 bit for bit, so NaN and +-Inf need no special casing.
        """
        connection = self.session.connection()
        driver = connection.connection.driver_connection
        types = _pg_copy_types(connection.dialect, table, columns)
        sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with driver.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)

    def delete_history(self, job_id: str) -> None:
        """Everything a run recorded (steps, layers, epochs, rollups, report); not its events."""
        for model in (StepMetric, LayerStat, EpochMetric, SeriesRollup, DiagnosticReportRow):
            self.session.execute(delete(model).where(model.job_id == job_id)
                                 .execution_options(synchronize_session=False))

    def insert_steps(self, rows: Sequence[tuple[Any, ...]], has_nan: np.ndarray | None = None) -> None:
        """Rows of (job_id, step, epoch, loss, grad_norm, clipped_grad_norm, lr, clipped)."""
        self._insert(StepMetric.__table__, STEP_COLUMNS, rows, has_nan)

    def insert_layers(self, rows: Sequence[tuple[Any, ...]], has_nan: np.ndarray | None = None) -> None:
        """Rows of (job_id, layer, step, *LAYER_METRICS)."""
        self._insert(LayerStat.__table__, LAYER_COLUMNS, rows, has_nan)

    def insert_epochs(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.connection().execute(insert(EpochMetric), rows)

    def insert_rollups(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows of (job_id, level, layer, block, data)."""
        self._insert(SeriesRollup.__table__, ("job_id", "level", "layer", "block", "data"), rows,
                     np.zeros(len(rows), dtype=bool))

    # ---- reads ----
    def count_steps(self, job_id: str, start: int, end: int) -> int:
        return int(self.session.scalar(
            select(func.count()).select_from(StepMetric)
            .where(StepMetric.job_id == job_id, StepMetric.step.between(start, end))
        ) or 0)

    def step_bounds(self, job_id: str, start: int, end: int) -> tuple[int | None, int | None]:
        """First and last recorded step within [start, end] (two index seeks)."""
        in_range = (StepMetric.job_id == job_id, StepMetric.step.between(start, end))
        lo = self.session.scalar(
            select(StepMetric.step).where(*in_range).order_by(StepMetric.step).limit(1))
        hi = self.session.scalar(
            select(StepMetric.step).where(*in_range).order_by(StepMetric.step.desc()).limit(1))
        return lo, hi

    def step_points(
        self, job_id: str, metrics: Sequence[str], ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw step metrics in the (inclusive) step ranges: steps, values, present."""
        cols = [getattr(StepMetric, m) for m in metrics]
        rows: list[Any] = []
        for lo, hi in ranges:
            if lo > hi:
                continue
            rows.extend(self.session.execute(
                select(StepMetric.step, *cols)
                .where(StepMetric.job_id == job_id, StepMetric.step.between(lo, hi))
                .order_by(StepMetric.step)
            ).all())
        values, present = _column_arrays([r[1:] for r in rows], len(metrics))
        return np.array([r[0] for r in rows], dtype=np.int64), values, present

    def layer_points(
        self, job_id: str, layer: int, metrics: Sequence[str], ranges: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw layer stats of one layer in the (inclusive) step ranges."""
        cols = [getattr(LayerStat, m) for m in metrics]
        rows: list[Any] = []
        for lo, hi in ranges:
            if lo > hi:
                continue
            rows.extend(self.session.execute(
                select(LayerStat.step, *cols)
                .where(LayerStat.job_id == job_id, LayerStat.layer == layer,
                       LayerStat.step.between(lo, hi))
                .order_by(LayerStat.step)
            ).all())
        values, present = _column_arrays([r[1:] for r in rows], len(metrics))
        return np.array([r[0] for r in rows], dtype=np.int64), values, present

    def rolled_until(self, job_id: str, layer: int, top_level: int) -> dict[int, int]:
        """Per level up to ``top_level``: the last step covered by stored blocks."""
        out: dict[int, int] = {}
        for level in range(MIN_LEVEL, top_level + 1):
            block = self.session.scalar(
                select(func.max(SeriesRollup.block))
                .where(SeriesRollup.job_id == job_id, SeriesRollup.level == level,
                       SeriesRollup.layer == layer))
            if block is not None:
                out[level] = ((block + 1) << level) - 1
        return out

    def rollup_blocks(self, job_id: str, layers: Sequence[int],
                      runs: Sequence[tuple[int, int, int]]) -> dict[int, tuple[np.ndarray, list[bytes]]]:
        """Stored blocks for ``runs`` of (level, first block, last block), per layer:
        (first step of each block, packed summaries)."""
        rows: list[Any] = []
        for level, lo, hi in runs:  # one index range scan per run
            rows.extend(self.session.execute(
                select(SeriesRollup.layer, SeriesRollup.level, SeriesRollup.block,
                       SeriesRollup.data)
                .where(SeriesRollup.job_id == job_id, SeriesRollup.level == level,
                       SeriesRollup.layer.in_(list(layers)),
                       SeriesRollup.block.between(lo, hi))
            ).all())
        grouped: dict[int, tuple[list[int], list[bytes]]] = {}
        for layer, level, block, data in rows:
            starts, blobs = grouped.setdefault(layer, ([], []))
            starts.append(block << level)
            blobs.append(data)
        return {k: (np.asarray(v[0], dtype=np.int64), v[1]) for k, v in grouped.items()}

    def epochs(self, job_id: str) -> list[EpochMetric]:
        return list(self.session.scalars(
            select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)))

    def last_step(self, job_id: str) -> int | None:
        value = self.session.scalar(
            select(func.max(StepMetric.step)).where(StepMetric.job_id == job_id))
        return None if value is None else int(value)

    def step_count(self, job_id: str) -> int:
        return int(self.session.scalar(
            select(func.count()).select_from(StepMetric).where(StepMetric.job_id == job_id)) or 0)

    def all_steps(self, job_id: str, *, stride: int = 1,
                  also: Sequence[int] = ()) -> list[StepMetric]:
        """The job's step rows in order; with ``stride`` > 1 only every stride-th step plus the
        steps in ``also`` (bounded memory for a diagnosis of a very long run)."""
        return list(self.session.scalars(
            select(StepMetric).where(StepMetric.job_id == job_id,
                                     self._thinned(StepMetric.step, stride, also))
            .order_by(StepMetric.step)))

    def all_layers(self, job_id: str, *, stride: int = 1,
                   also: Sequence[int] = ()) -> list[LayerStat]:
        return list(self.session.scalars(
            select(LayerStat).where(LayerStat.job_id == job_id,
                                    self._thinned(LayerStat.step, stride, also))
            .order_by(LayerStat.step, LayerStat.layer)))

    @staticmethod
    def _thinned(step: Any, stride: int, also: Sequence[int]) -> ColumnElement[bool]:
        if stride <= 1:
            return and_(True)
        keep = step % stride == 0
        return or_(keep, step.in_(list(also))) if also else keep

    def figures(self, job_id: str) -> dict[str, Any]:
        """Key figures of a run for comparisons: last/min loss, max grad norm and its step."""
        last = self.session.execute(
            select(StepMetric.step, StepMetric.loss).where(StepMetric.job_id == job_id)
            .order_by(StepMetric.step.desc()).limit(1)).first()
        steps = self.session.execute(
            select(StepMetric.step, StepMetric.loss, StepMetric.grad_norm)
            .where(StepMetric.job_id == job_id)).all()
        out: dict[str, Any] = {"final_loss": None, "min_loss": None, "max_grad_norm": None,
                               "max_grad_norm_step": None}
        if last is not None:
            out["final_loss"] = last[1]
        if steps:
            arr = np.array([(r[1], r[2]) for r in steps], dtype=np.float64)
            losses = arr[:, 0]
            finite = losses[np.isfinite(losses)]
            out["min_loss"] = float(finite.min()) if finite.size else float(losses[0])
            norms = np.where(np.isnan(arr[:, 1]), -np.inf, arr[:, 1])
            i = int(np.argmax(norms))
            out["max_grad_norm"] = float(arr[i, 1])
            out["max_grad_norm_step"] = int(steps[i][0])
        return out


_COPY_TYPES: dict[tuple[str, tuple[str, ...]], list[str]] = {}


def _pg_copy_types(dialect: Any, table: Any, columns: Sequence[str]) -> list[str]:
    """PostgreSQL type names of ``columns`` (binary COPY needs them), e.g. 'double precision'."""
    key = (table.name, tuple(columns))
    if key not in _COPY_TYPES:
        _COPY_TYPES[key] = [
            re.sub(r"\(.*\)", "", table.c[name].type.compile(dialect=dialect)).strip().lower()
            for name in columns]
    return _COPY_TYPES[key]
