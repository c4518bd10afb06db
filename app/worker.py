"""``run_job(job_id)``: claim, train, store, diagnose, finish. Executors only call this.

A sweep member is handed to :func:`app.sweep_worker.run_sweep_group`, which trains it batched
with its queued siblings; both end runs through :mod:`app.run_end`.

The worker never raises for a training problem: whatever happens, the job ends in
``succeeded``, ``failed`` (with a readable error) or ``cancelled`` — or, when its run is
given up (the worker shuts down, or the recovery policy gave the job to another worker),
back in ``queued`` for another run (see app.recovery).

A claimed run is a :class:`~app.repositories.Claim` (worker id + attempt): a heartbeat
thread stamps the job every ``heartbeat_timeout / 4`` seconds, and every write of the run is
conditional on the job still running under that claim.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from app.artifacts import keep_trainer_models
from app.blobstore import blob_store
from app.correlation import bind
from app.datasets import attach_uploaded
from app.db import retry_on_locked, unit_of_work
from app.heartbeat import Heartbeat
from app.lifecycle import move_job
from app.models import Job
from app.quotas import start_allowance
from app.repositories import Claim, db_now
from app.run_end import conclude, describe, finish_run, first_non_finite, give_up
from app.sink import DatabaseSink
from app.sweep_worker import run_sweep_group
from app.worker_process import WorkerContext, current_context, handback_due
from core.spec import TrainingSpec

__all__ = ["run_job"]

log = logging.getLogger(__name__)


def run_job(job_id: str, *, context: WorkerContext | None = None) -> str:
    """Run job ``job_id`` if it is still queued; returns its final status, ``'skipped'`` (it
    was not queued), ``'requeued'`` (handed back at shutdown) or ``'lost'`` (the job was
    given to another worker while this one ran it)."""
    ctx = context or current_context()
    grouped = run_sweep_group(job_id, ctx)  # sweep members train batched, by group
    if grouped is not None:
        return grouped
    claimed = retry_on_locked(lambda: _claim(ctx, job_id))
    if claimed == "deferred":
        log.info("job %s waits: its tenant runs as many jobs as its quota allows", job_id)
        return "deferred"
    if claimed is None:
        log.info("job %s was not queued any more; skipped", job_id)
        return "skipped"
    run, job_row = claimed
    with (bind(request_id=job_row["request_id"], job_id=job_id,  # in every log line
               tenant=job_row["tenant"]),
          Heartbeat(job_id, run, ctx.factory, ctx.settings.heartbeat_interval_seconds) as beat):
        return _train(ctx, job_id, run, job_row, beat)


def _claim(ctx: WorkerContext, job_id: str
           ) -> tuple[Claim, dict[str, Any]] | Literal["deferred"] | None:
    with unit_of_work(ctx.factory) as session:
        if not start_allowance(session, job_id, ctx.settings):  # the tenant's running quota
            return "deferred"
        now = db_now(session)
        job = move_job(session, job_id, "running", started_at=now, heartbeat_at=now,
                       worker_id=ctx.worker_id, attempts=Job.attempts + 1)
        if job is None:
            return None
        return Claim(ctx.worker_id, job.attempts), {"spec": job.spec,
                                                     "total_steps": job.total_steps,
                                                     "request_id": job.request_id,
                                                     "tenant": job.tenant}


def _train(ctx: WorkerContext, job_id: str, run: Claim, job_row: dict[str, Any],
           heartbeat: Heartbeat) -> str:
    settings, factory = ctx.settings, ctx.factory
    started = time.monotonic()
    sink: DatabaseSink | None = None
    trainer: Any = None
    try:
        spec = TrainingSpec.model_validate(job_row["spec"],
                                           context={"limits": settings.spec_limits()})
        attach_uploaded(spec, blob_store(settings))  # uploaded data: read via the blob store
        sink = DatabaseSink(
            job_id, factory, total_steps=job_row["total_steps"],
            flush_every=settings.flush_every_steps, flush_interval=settings.flush_interval_seconds,
            progress_interval=settings.progress_event_interval_seconds, claim=run,
            heartbeat=heartbeat, handback_due=handback_due)
        from core import Trainer  # the trainer is imported only where jobs run

        trainer = Trainer(spec, max_runtime=settings.max_job_runtime_seconds, keep_best=True)
        # bounded memory for very long runs; the database still gets every record
        result = trainer.run(sink, max_records=settings.diagnosis_max_records)
        if sink.given_up:
            return give_up(factory, job_id, run, sink)
        sink.close()
    except Exception as exc:  # a training crash fails the job, never the worker
        log.exception("job %s failed", job_id)
        if sink is not None:
            try:
                sink.close()
            except Exception:
                log.exception("job %s: could not store the last records", job_id)
        if trainer is not None:  # the weights as the crash left them
            keep_trainer_models(settings, job_id, trainer, stop_reason=None)
        finish_run(factory, job_id, run, status="failed", stop_reason=None,
                   error=f"training failed: {describe(exc)}", report=None,
                   first_non_finite=sink.first_non_finite if sink else None,
                   steps_completed=sink.steps_completed if sink else None,
                   runtime=time.monotonic() - started)
        return "failed"
    if sink.lost:
        return "lost"

    stop_reason = str(result.stop_reason)
    status, error, report = conclude(job_id, result, settings)
    keep_trainer_models(settings, job_id, trainer, step=int(result.steps_completed),
                        stop_reason=stop_reason)  # before the terminal move: then downloadable
    if not finish_run(factory, job_id, run, status=status, stop_reason=stop_reason, error=error,
                      report=report, first_non_finite=first_non_finite(result, sink),
                      steps_completed=int(result.steps_completed),
                      runtime=time.monotonic() - started):
        log.warning("job %s was given to another worker before it finished here", job_id)
        return "lost"
    return status
