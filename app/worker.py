"""``run_job(job_id)``: claim, train, store, diagnose, finish. Executors only call this.

The worker never raises for a training problem: whatever happens, the job ends in
``succeeded``, ``failed`` (with a readable error) or ``cancelled`` — or, when its run is
given up (the worker shuts down, or the reaper gave the job to another worker), back in
``queued`` for another run (see app.recovery).

A claimed run is a :class:`~app.repositories.Claim` (worker id + attempt): a heartbeat
thread stamps the job every ``heartbeat_timeout / 4`` seconds, and every write of the run is
conditional on the job still running under that claim.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import build_engine, build_sessionmaker, retry_on_locked, unit_of_work
from app.downsampling import (
    LAYER_METRICS,
    STEP_METRICS,
    RollupBlocks,
    RollupBuilder,
    pack_block,
)
from app.jsonutil import encode_non_finite
from app.models import Job, utcnow
from app.repositories import (
    Claim,
    EventRepository,
    HistoryRepository,
    JobLostError,
    JobRepository,
    ReportRepository,
    db_now,
    owned_by,
)
from app.settings import Settings
from core.spec import TrainingSpec
from core.telemetry import EpochRecord, StepRecord, StopReason

__all__ = [
    "DatabaseSink",
    "Heartbeat",
    "WorkerContext",
    "configure_worker",
    "fail_job",
    "request_handback",
    "run_job",
]

log = logging.getLogger(__name__)

STATUS_FOR_STOP: dict[str, str] = {
    "completed": "succeeded",
    "non_finite": "succeeded",
    "early_stop": "succeeded",
    "explosion": "succeeded",
    "cancelled": "cancelled",
    "max_runtime": "failed",
}


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    worker_id: str


_CONTEXT: WorkerContext | None = None


def configure_worker(settings: Settings | None = None) -> WorkerContext:
    """Build this process's engine (once) for ``settings`` (default: from the environment)."""
    global _CONTEXT
    settings = settings or Settings()
    if _CONTEXT is not None and _CONTEXT.settings == settings:
        return _CONTEXT
    if _CONTEXT is not None:
        _CONTEXT.engine.dispose()
    # one connection for the job, one for its heartbeat thread
    engine = build_engine(settings.url, busy_timeout_ms=settings.sqlite_busy_timeout_ms,
                          pool_size=2, max_overflow=2, application_name="gradwatch-worker")
    _CONTEXT = WorkerContext(settings, engine, build_sessionmaker(engine),
                             f"{socket.gethostname()}:{os.getpid()}")
    return _CONTEXT


# When this process should give its running job back to the queue (a warm shutdown's grace
# period ends); set from a signal handler, read by DatabaseSink.should_stop every step.
_HANDBACK_AT: float | None = None


def request_handback(grace_seconds: float) -> None:
    """Let the job running in this process go on for ``grace_seconds``; if it has not
    finished by then, stop it and put it back in the queue (its history starts over)."""
    global _HANDBACK_AT
    at = time.monotonic() + grace_seconds
    _HANDBACK_AT = at if _HANDBACK_AT is None else min(_HANDBACK_AT, at)


def _handback_due() -> bool:
    return _HANDBACK_AT is not None and time.monotonic() >= _HANDBACK_AT


class Heartbeat:
    """Stamps a running job's heartbeat from a daemon thread every ``interval`` seconds.

    The heartbeat proves the worker process alive independently of training progress (a
    slow step, the final diagnosis); it dies with the process, which is what the reaper
    watches for. ``lost`` is set when the job no longer runs under ``claim``.
    """

    def __init__(self, job_id: str, claim: Claim, factory: sessionmaker[Session],
                 interval: float) -> None:
        self.job_id, self.claim, self.factory, self.interval = job_id, claim, factory, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> bool:
        with unit_of_work(self.factory) as session:
            return JobRepository(session).heartbeat(self.job_id, self.claim)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                alive = retry_on_locked(self._beat)
            except Exception:  # the database is away: try again next beat
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)
                continue
            if not alive and not self._stop.is_set():
                log.warning("job %s is no longer ours (%s): stopping", self.job_id, self.claim)
                self.lost.set()
                return


def _nonfinite_kind(value: float) -> str:
    return "nan" if math.isnan(value) else "inf"


def _first_non_finite(record: StepRecord) -> dict[str, Any] | None:
    if not math.isfinite(record.loss):
        return {"step": record.step, "layer": None, "tensor": "loss",
                "value": _nonfinite_kind(record.loss)}
    for lr in record.layers:
        for tensor, value in (("gradient", lr.grad_norm), ("weight", lr.weight_norm),
                              ("update", lr.update_norm), ("activation", lr.act_mean)):
            if value is not None and not math.isfinite(value):
                return {"step": record.step, "layer": lr.layer, "tensor": tensor,
                        "value": _nonfinite_kind(value)}
    if not math.isfinite(record.grad_norm):
        return {"step": record.step, "layer": None, "tensor": "gradient",
                "value": _nonfinite_kind(record.grad_norm)}
    return None


def describe_non_finite(info: dict[str, Any]) -> str:
    where = "the loss" if info.get("layer") is None else f"layer {info['layer']}'s {info['tensor']}"
    what = "NaN" if info.get("value") == "nan" else "Inf"
    return f"first {what} at step {info['step']} in {where}"


def latest_figures(record: StepRecord) -> dict[str, Any]:
    figures: dict[str, Any] = encode_non_finite({
        "step": record.step, "loss": record.loss, "grad_norm": record.grad_norm,
        "clipped_grad_norm": record.clipped_grad_norm, "lr": record.lr,
        "layer_grad_norms": [lr.grad_norm for lr in record.layers],
    })
    return figures


class DatabaseSink:
    """A :class:`core.telemetry.Sink` that batch-inserts records every N steps or T seconds.

    Each flush is one short transaction: the records, the completed rollup blocks, progress
    and heartbeat, an (throttled) progress event; it reads the cancel flag, which
    :meth:`should_stop` then reports, so a cancel is honoured within one flush.
    """

    def __init__(self, job_id: str, factory: sessionmaker[Session], *, total_steps: int,
                 flush_every: int = 100, flush_interval: float = 1.0,
                 progress_interval: float = 1.0, claim: Claim | None = None,
                 heartbeat: Heartbeat | None = None) -> None:
        self.job_id = job_id
        self.factory = factory
        self.claim = claim
        self.heartbeat = heartbeat
        self.lost = False  # the job no longer runs under our claim: write nothing more
        self.handed_back = False  # the worker is shutting down: the job goes back to the queue
        self.total_steps = total_steps
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.progress_interval = progress_interval
        self.steps_completed = 0
        self.first_non_finite: dict[str, Any] | None = None
        self.cancelled = False
        self.rows_written = 0
        self._steps: list[StepRecord] = []
        self._epochs: list[EpochRecord] = []
        self._alerts: list[dict[str, Any]] = []
        self._step_rollups = RollupBuilder(len(STEP_METRICS))
        self._layer_rollups: RollupBuilder | None = None
        self._n_layers = 0
        self._last_flush = time.monotonic()
        self._last_progress_event = 0.0
        self._last_record: StepRecord | None = None

    # ---- Sink protocol ----
    def write_steps(self, records: list[StepRecord]) -> None:
        self._steps.extend(records)
        if (len(self._steps) >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_interval):
            self.flush()

    def write_epoch(self, record: EpochRecord) -> None:
        self._epochs.append(record)

    def write_alert(self, finding: Any) -> None:
        """An online-monitor finding: stored as an ``alert`` event right away."""
        if hasattr(finding, "model_dump_json"):
            import json
            data = json.loads(finding.model_dump_json())
        elif isinstance(finding, dict):
            data = encode_non_finite(finding)
        else:
            data = {"message": str(finding)}
        self._alerts.append(data)
        self.flush()

    def should_stop(self) -> StopReason | None:
        if self.cancelled:
            return "cancelled"
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            self.lost = True
        if self.lost:
            return "cancelled"
        if _handback_due():
            self.handed_back = True
            return "cancelled"
        return None

    @property
    def given_up(self) -> bool:
        """True when this run's records must not be stored any more."""
        return self.lost or self.handed_back

    # ---- flushing ----
    def close(self) -> None:
        """Flush what is buffered and close every open rollup block."""
        self.flush(final=True)

    def flush(self, *, final: bool = False) -> None:
        steps, epochs, alerts = self._steps, self._epochs, self._alerts
        self._steps, self._epochs, self._alerts = [], [], []
        self._last_flush = time.monotonic()
        if self.given_up:
            return
        rows = self._rows(steps, final=final)
        epoch_rows = [{
            "job_id": self.job_id, "epoch": e.epoch, "step": e.step, "train_loss": e.train_loss,
            "val_loss": e.val_loss, "val_accuracy": e.val_accuracy,
            "train_accuracy": e.train_accuracy} for e in epochs]
        if steps:
            self._last_record = steps[-1]
            self.steps_completed = max(self.steps_completed, steps[-1].step + 1)
            if self.first_non_finite is None:
                for record in steps:
                    found = _first_non_finite(record)
                    if found is not None:
                        self.first_non_finite = found
                        break
        now = time.monotonic()
        progress_event = bool(steps) and (final or now - self._last_progress_event
                                          >= self.progress_interval)
        if progress_event:
            self._last_progress_event = now
        latest = latest_figures(self._last_record) if self._last_record is not None else None

        def write() -> bool:
            with unit_of_work(self.factory) as session:
                # first: the claim check takes the job's row lock (nothing is written for a
                # run that was given up), then the records
                cancel = JobRepository(session).record_progress(
                    self.job_id, steps_completed=self.steps_completed, latest=latest,
                    first_non_finite=self.first_non_finite, claim=self.claim)
                history = HistoryRepository(session)
                history.insert_steps(rows.steps, rows.steps_nan)
                history.insert_layers(rows.layers, rows.layers_nan)
                history.insert_epochs(epoch_rows)
                history.insert_rollups(rows.rollups)
                events = EventRepository(session)
                for alert in alerts:
                    events.append(self.job_id, "alert", alert)
                if progress_event:
                    events.append(self.job_id, "progress", {
                        "status": "running",
                        "progress": progress_dict(self.steps_completed, self.total_steps),
                        "latest": latest})
                return cancel

        try:
            self.cancelled = retry_on_locked(write) or self.cancelled
        except JobLostError:
            log.warning("job %s is no longer ours (%s): its run stops unrecorded",
                        self.job_id, self.claim)
            self.lost = True
            return
        self.rows_written += len(rows.steps) + len(rows.layers)

    def _rows(self, steps: list[StepRecord], *, final: bool) -> _Rows:
        job_id = self.job_id
        rows = _Rows()
        layer_blocks: list[RollupBlocks] = []
        step_blocks: list[RollupBlocks] = []
        if steps:
            n = len(steps)
            rows.steps = [(job_id, r.step, r.epoch, r.loss, r.grad_norm, r.clipped_grad_norm,
                           r.lr, bool(r.clipped)) for r in steps]
            values = np.array([row[3:7] for row in rows.steps], dtype=np.float64)
            rows.steps_nan = np.asarray(np.isnan(values).any(axis=1), dtype=bool)
            step_idx = np.fromiter((r.step for r in steps), np.int64, n)
            step_blocks = self._step_rollups.add(step_idx, values, np.ones(values.shape, bool))
            rows.layers = [(job_id, lr.layer, r.step, lr.grad_norm, lr.weight_grad_norm,
                            lr.weight_norm, lr.update_norm, lr.act_mean, lr.act_std,
                            lr.dead_fraction, lr.saturated_fraction)
                           for r in steps for lr in r.layers]
            if self._layer_rollups is None:
                self._n_layers = len(steps[0].layers)
                self._layer_rollups = RollupBuilder(self._n_layers * len(LAYER_METRICS))
            if rows.layers and len(rows.layers) == n * self._n_layers:
                table = np.array([row[3:] for row in rows.layers], dtype=object)
                present = table != None  # noqa: E711  (activation stats may be absent)
                layer_values = np.where(present, table, np.nan).astype(np.float64)
                rows.layers_nan = np.asarray(np.isnan(layer_values).any(axis=1), dtype=bool)
                width = self._n_layers * len(LAYER_METRICS)
                layer_blocks = self._layer_rollups.add(
                    step_idx, layer_values.reshape(n, width), present.reshape(n, width))
            else:
                rows.layers_nan = None
        if final:
            step_blocks += self._step_rollups.finish()
            if self._layer_rollups is not None:
                layer_blocks += self._layer_rollups.finish()
        rows.rollups = _rollup_rows(job_id, step_blocks, len(STEP_METRICS), [-1])
        rows.rollups += _rollup_rows(job_id, layer_blocks, len(LAYER_METRICS),
                                     list(range(self._n_layers)))
        return rows


@dataclass
class _Rows:
    steps: list[tuple[Any, ...]] = field(default_factory=list)
    steps_nan: np.ndarray | None = None
    layers: list[tuple[Any, ...]] = field(default_factory=list)
    layers_nan: np.ndarray | None = None
    rollups: list[tuple[Any, ...]] = field(default_factory=list)


def _rollup_rows(job_id: str, blocks: list[RollupBlocks], n_metrics: int,
                 layer_of_group: list[int]) -> list[tuple[Any, ...]]:
    """One row per (level, layer, block) holding all of that layer's metrics."""
    rows: list[tuple[Any, ...]] = []
    for rb in blocks:
        summary = rb.summary
        for g, layer in enumerate(layer_of_group):
            columns = slice(g * n_metrics, (g + 1) * n_metrics)
            has_data = summary.count[:, columns].sum(axis=1) > 0
            for b in np.flatnonzero(has_data):
                rows.append((job_id, rb.level, layer, int(rb.block[b]),
                             pack_block(summary, int(b), columns)))
    return rows


def _describe(exc: BaseException, limit: int = 500) -> str:
    """A readable one-line description (database errors without their SQL and parameters)."""
    from sqlalchemy.exc import DBAPIError

    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}"


def progress_dict(steps_completed: int, total_steps: int) -> dict[str, Any]:
    fraction = min(1.0, steps_completed / total_steps) if total_steps else 0.0
    return {"step": steps_completed, "total_steps": total_steps, "fraction": round(fraction, 6)}


def _finish(factory: sessionmaker[Session], job_id: str, *, status: str, stop_reason: str | None,
            error: str | None, report: dict[str, Any] | None, first_non_finite: Any,
            steps_completed: int | None, runtime: float | None, claim: Claim | None = None
            ) -> bool:
    """Move the job to its terminal ``status`` (only while it runs under ``claim``, if given);
    True if it moved."""
    def write() -> bool:
        with unit_of_work(factory) as session:
            jobs = JobRepository(session)
            values: dict[str, Any] = {
                "finished_at": utcnow(), "stop_reason": stop_reason, "error": error,
                "heartbeat_at": db_now(session),
            }
            if runtime is not None:
                values["runtime_seconds"] = runtime
            if report is not None:
                values["verdict"] = report.get("verdict")
            if first_non_finite is not None:
                values["first_non_finite"] = first_non_finite
            if steps_completed is not None:
                values["steps_completed"] = steps_completed
            moved = jobs.transition(job_id, status, where=owned_by(claim) if claim else (),
                                    **values)
            if moved:
                if report is not None:
                    ReportRepository(session).put(job_id, report)
                job = jobs.get(job_id)
                EventRepository(session).append(job_id, "status", {
                    "status": status, "terminal": True, "stop_reason": stop_reason,
                    "verdict": values.get("verdict"), "error": error,
                    "progress": progress_dict(job.steps_completed, job.total_steps) if job else None,
                })
            return moved
    return retry_on_locked(write)


def _report_json(report: Any) -> dict[str, Any]:
    import json
    data: dict[str, Any] = json.loads(report.model_dump_json())
    return data


def run_job(job_id: str, *, context: WorkerContext | None = None) -> str:
    """Run job ``job_id`` if it is still queued; returns its final status, ``'skipped'`` (it
    was not queued), ``'requeued'`` (handed back at shutdown) or ``'lost'`` (the job was
    given to another worker while this one ran it)."""
    ctx = context or _CONTEXT or configure_worker()
    settings, factory = ctx.settings, ctx.factory
    from app.sweep_worker import run_sweep_group  # sweep members train batched, by group

    grouped = run_sweep_group(job_id, ctx)
    if grouped is not None:
        return grouped

    def claim() -> tuple[Claim, dict[str, Any]] | None:
        with unit_of_work(factory) as session:
            jobs = JobRepository(session)
            now = db_now(session)
            if not jobs.transition(job_id, "running", started_at=now, heartbeat_at=now,
                                   worker_id=ctx.worker_id, attempts=Job.attempts + 1):
                return None
            job = jobs.get(job_id)
            assert job is not None
            EventRepository(session).append(job_id, "status", {
                "status": "running", "terminal": False, "attempt": job.attempts,
                "progress": progress_dict(0, job.total_steps)})
            return (Claim(ctx.worker_id, job.attempts),
                    {"spec": job.spec, "total_steps": job.total_steps})

    claimed = retry_on_locked(claim)
    if claimed is None:
        log.info("job %s was not queued any more; skipped", job_id)
        return "skipped"
    run, job_row = claimed
    with Heartbeat(job_id, run, factory, settings.heartbeat_interval_seconds) as heartbeat:
        return _train(ctx, job_id, run, job_row, heartbeat)


def _train(ctx: WorkerContext, job_id: str, run: Claim, job_row: dict[str, Any],
           heartbeat: Heartbeat) -> str:
    settings, factory = ctx.settings, ctx.factory
    started = time.monotonic()
    sink: DatabaseSink | None = None
    try:
        spec = TrainingSpec.model_validate(job_row["spec"],
                                           context={"limits": settings.spec_limits()})
        sink = DatabaseSink(
            job_id, factory, total_steps=job_row["total_steps"],
            flush_every=settings.flush_every_steps, flush_interval=settings.flush_interval_seconds,
            progress_interval=settings.progress_event_interval_seconds, claim=run,
            heartbeat=heartbeat)
        from core import Trainer  # the trainer is imported only where jobs run

        trainer = Trainer(spec, max_runtime=settings.max_job_runtime_seconds)
        # bounded memory for very long runs; the database still gets every record
        result = trainer.run(sink, max_records=settings.diagnosis_max_records)
        if sink.given_up:
            return _give_up(factory, job_id, run, sink)
        sink.close()
    except Exception as exc:  # a training crash fails the job, never the worker
        log.exception("job %s failed", job_id)
        message = f"training failed: {_describe(exc)}"
        tb = traceback.extract_tb(exc.__traceback__)
        if tb:
            frame = tb[-1]
            message += f" (at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name})"
        if sink is not None:
            try:
                sink.close()
            except Exception:
                log.exception("job %s: could not store the last records", job_id)
        _finish(factory, job_id, status="failed", stop_reason=None, error=message, report=None,
                first_non_finite=sink.first_non_finite if sink else None,
                steps_completed=sink.steps_completed if sink else None,
                runtime=time.monotonic() - started, claim=run)
        return "failed"
    if sink.lost:
        return "lost"

    stop_reason = str(result.stop_reason)
    status = STATUS_FOR_STOP.get(stop_reason, "succeeded")
    error: str | None = None
    if stop_reason == "max_runtime":
        error = (f"the job exceeded the maximum runtime of {settings.max_job_runtime_seconds:g} s "
                 "(GRADWATCH_MAX_JOB_RUNTIME_SECONDS) and was stopped")
    report: dict[str, Any] | None = None
    try:
        from core.diagnostics import diagnose

        report = _report_json(diagnose(result))
    except Exception as exc:
        log.exception("job %s: diagnosis failed", job_id)
        if status == "succeeded":
            status, error = "failed", f"diagnosis failed: {_describe(exc)}"
    first_nf = None
    if result.first_non_finite is not None:
        nf = result.first_non_finite
        first_nf = {"step": nf.step, "layer": nf.layer, "tensor": nf.tensor, "value": nf.value}
    if not _finish(factory, job_id, status=status, stop_reason=stop_reason, error=error,
                   report=report, first_non_finite=first_nf or sink.first_non_finite,
                   steps_completed=int(result.steps_completed),
                   runtime=time.monotonic() - started, claim=run):
        log.warning("job %s was given to another worker before it finished here", job_id)
        return "lost"
    return status


def _give_up(factory: sessionmaker[Session], job_id: str, run: Claim, sink: DatabaseSink) -> str:
    if sink.lost:
        log.warning("job %s was given to another worker; this run stops unrecorded", job_id)
        return "lost"
    from app.recovery import hand_back

    outcome = hand_back(factory, job_id, run)
    log.warning("worker shutting down: job %s %s", job_id, outcome or "was no longer ours")
    return "requeued" if outcome == "requeued" else outcome or "lost"


def fail_job(factory: sessionmaker[Session], job_id: str, error: str) -> bool:
    """Mark a running job failed with ``error`` (used when its worker is lost); True if it was."""
    before = _status(factory, job_id)
    if before != "running":
        return False
    _finish(factory, job_id, status="failed", stop_reason=None, error=error, report=None,
            first_non_finite=None, steps_completed=None, runtime=None)
    return _status(factory, job_id) == "failed"


def _status(factory: sessionmaker[Session], job_id: str) -> str | None:
    with factory() as session:
        return JobRepository(session).status_of(job_id)
