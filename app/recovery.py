"""Jobs that outlive their worker: the hand-back at shutdown and the reaper.

A running job proves its worker alive with a heartbeat (:class:`app.worker.Heartbeat`,
every ``heartbeat_timeout / 4`` seconds, stamped with the database's clock). When the
heartbeat stops — the process was killed (``kill -9``, the OOM killer) or its machine
vanished — :func:`reap` gives the run up: the job goes back to ``queued`` and what the lost
run recorded is deleted **in the same transaction**, so the next run starts the history
over (no duplicate rows, no history stitched from two runs whose BLAS may round
differently). The caller then sends the job id to the broker again. A job that already had
``max_attempts`` starts is failed with "worker lost" instead, one that overran its runtime
limit is failed for that, and one whose cancel was requested is cancelled.

Every change here is a conditional UPDATE pinned to what was observed (attempt, heartbeat),
so any number of reapers (one per API process) can run at once: one wins, the others find
nothing to do. A run that was given up but is in fact still alive (a network partition)
finds out at its next write: it no longer owns the job (:class:`app.repositories.Claim`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session, sessionmaker

from app.db import retry_on_locked, unit_of_work
from app.models import Job, utcnow
from app.repositories import Claim, EventRepository, JobRepository, as_utc, owned_by
from app.settings import Settings

__all__ = ["Outcome", "hand_back", "reap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the reaper did to one job: ``requeued`` (send its id again), ``failed`` or
    ``cancelled``."""

    job_id: str
    action: str
    detail: str


def _progress(job: Job | None) -> dict[str, Any] | None:
    from app.worker import progress_dict

    return progress_dict(job.steps_completed, job.total_steps) if job else None


def _release(session: Session, job_id: str, *, where: list[ColumnElement[bool]], reason: str,
             count_attempt: bool, message_kept: bool) -> str | None:
    """Re-queue the run pinned by ``where`` — or cancel it, if its cancel was requested."""
    jobs = JobRepository(session)
    events = EventRepository(session)
    if jobs.requeue(job_id, where=[*where, Job.cancel_requested.is_(False)],
                    count_attempt=count_attempt):
        if message_kept:  # the broker message goes back with the job: no new one needed
            jobs.mark_enqueued(job_id)
        job = jobs.get(job_id)
        events.append(job_id, "status", {
            "status": "queued", "terminal": False, "requeued": True, "reason": reason,
            "attempts": job.attempts if job else None, "progress": _progress(job)})
        return "requeued"
    if jobs.transition(job_id, "cancelled", where=where, finished_at=utcnow(),
                       stop_reason="cancelled"):
        job = jobs.get(job_id)
        events.append(job_id, "status", {
            "status": "cancelled", "terminal": True, "stop_reason": "cancelled",
            "progress": _progress(job)})
        return "cancelled"
    return None


def hand_back(factory: sessionmaker[Session], job_id: str, run: Claim) -> str | None:
    """Give a run up because its worker shuts down: the job goes back to the queue without
    spending an attempt (the Celery task re-queues its own message). Returns 'requeued',
    'cancelled' (its cancel was requested) or None (the job was no longer this run's)."""
    def write() -> str | None:
        with unit_of_work(factory) as session:
            return _release(session, job_id, where=owned_by(run),
                            reason="its worker shut down; the job starts over on another "
                                   "worker", count_attempt=False, message_kept=True)
    return retry_on_locked(write)


@dataclass(frozen=True)
class _Silent:
    job_id: str
    attempts: int
    worker_id: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    cancel_requested: bool
    silent_for: float
    running_for: float | None


def _silent_jobs(factory: sessionmaker[Session], timeout: float, executor: str | None
                 ) -> list[_Silent]:
    with factory() as session:
        jobs = JobRepository(session)
        now = jobs.clock()
        out = []
        for job in jobs.running(executor=executor):
            last = job.heartbeat_at or job.started_at
            if last is None:
                continue
            silent_for = (now - as_utc(last)).total_seconds()
            if silent_for <= timeout:
                continue
            running_for = (now - as_utc(job.started_at)).total_seconds() if job.started_at else None
            out.append(_Silent(job.id, job.attempts, job.worker_id, job.heartbeat_at,
                               job.started_at, bool(job.cancel_requested), silent_for,
                               running_for))
        return out


def reap(factory: sessionmaker[Session], settings: Settings, *, executor: str | None = "celery"
         ) -> list[Outcome]:
    """One pass over the running jobs of ``executor``: settle every job whose heartbeat is
    older than ``heartbeat_timeout_seconds`` (see the module docstring)."""
    outcomes = []
    for job in _silent_jobs(factory, settings.heartbeat_timeout_seconds, executor):
        def settle(job: _Silent = job) -> Outcome | None:
            return _settle(factory, settings, job)

        outcome = retry_on_locked(settle)
        if outcome is not None:
            log.warning("job %s %s: %s", outcome.job_id, outcome.action, outcome.detail)
            outcomes.append(outcome)
    return outcomes


def _settle(factory: sessionmaker[Session], settings: Settings, job: _Silent) -> Outcome | None:
    # pinned to what we saw: if the worker beat (or anything moved the job) since, no change
    pinned: list[ColumnElement[bool]] = [
        Job.attempts == job.attempts,
        Job.heartbeat_at.is_(None) if job.heartbeat_at is None
        else Job.heartbeat_at == job.heartbeat_at,
    ]
    lost = f"no heartbeat from worker {job.worker_id} for {job.silent_for:.0f} s"
    limit = settings.max_job_runtime_seconds + settings.runtime_grace_seconds
    with unit_of_work(factory) as session:
        jobs = JobRepository(session)
        error: str | None = None
        if job.cancel_requested:
            pass  # cancelled below, whatever else is true
        elif job.running_for is not None and job.running_for > limit:
            error = (f"the job exceeded the maximum runtime of "
                     f"{settings.max_job_runtime_seconds:g} s (GRADWATCH_MAX_JOB_RUNTIME_SECONDS) "
                     f"and its worker stopped answering ({lost})")
        elif job.attempts >= settings.max_attempts:
            error = (f"worker lost: {lost}; the job was started {job.attempts} times "
                     f"(GRADWATCH_MAX_ATTEMPTS={settings.max_attempts}) and is not retried again")
        if error is None:
            action = _release(session, job.job_id, where=[Job.status == "running", *pinned],
                              reason=f"worker lost: {lost}", count_attempt=True,
                              message_kept=False)
            return Outcome(job.job_id, action, lost) if action else None
        if not jobs.transition(job.job_id, "failed", where=pinned, finished_at=utcnow(),
                               error=error):
            return None
        current = jobs.get(job.job_id)
        EventRepository(session).append(job.job_id, "status", {
            "status": "failed", "terminal": True, "stop_reason": None, "verdict": None,
            "error": error, "progress": _progress(current)})
        return Outcome(job.job_id, "failed", error)
