"""The one recovery policy for jobs that outlive their worker, whichever executor ran them.

A running job proves its worker alive with a heartbeat (:class:`app.heartbeat.Heartbeat`,
every ``heartbeat_timeout / 4`` seconds, stamped and compared on the database's clock). A run
is given up when its heartbeat stops (:func:`reap`: ``kill -9``, the OOM killer, a vanished
machine, a frozen process) or when the local executor sees its worker process die
(:func:`worker_died`). Then, in one transaction:

* a job whose cancel was requested is ``cancelled``;
* a job that overran its runtime limit, or that already had ``GRADWATCH_MAX_ATTEMPTS``
  starts, is ``failed`` with the reason;
* otherwise it goes back to ``queued`` and what the lost run recorded is deleted, so the
  next run starts the history over (no duplicate rows, no history stitched from two runs).
  The caller sends the id again.

A worker shutting down hands its job back (:func:`hand_back`) the same way without spending
an attempt. Every change is a conditional move pinned to the run that was observed (its
attempt, its heartbeat or its worker), so any number of API processes can run this at once;
a run given up while in fact alive finds out at its next write (:class:`app.repositories.Claim`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session, sessionmaker

from app.db import retry_on_locked, unit_of_work
from app.lifecycle import move_job
from app.models import Job, utcnow
from app.repositories import Claim, HistoryRepository, JobRepository, as_utc, owned_by
from app.settings import Settings

__all__ = ["Outcome", "hand_back", "reap", "requeue", "worker_died"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the policy did to one job: ``requeued`` (send its id again), ``failed`` or
    ``cancelled``."""

    job_id: str
    action: str
    detail: str


_RESET = {"worker_id": None, "heartbeat_at": None, "started_at": None, "enqueued_at": None,
          "steps_completed": 0, "latest": None, "first_non_finite": None}


def requeue(session: Session, job_id: str, *, where: Sequence[ColumnElement[bool]],
            reason: str, count_attempt: bool = True, message_kept: bool = False) -> bool:
    """running -> queued for the run pinned by ``where`` (unless its cancel was requested),
    deleting what the run recorded in the same transaction. ``count_attempt=False`` (a
    hand-back at shutdown) does not spend an attempt; ``message_kept``: the broker message
    goes back with the job, so it counts as enqueued."""
    values: dict[str, Any] = dict(_RESET)
    if not count_attempt:
        values["attempts"] = Job.attempts - 1
    if message_kept:
        values["enqueued_at"] = utcnow()
    if move_job(session, job_id, "queued", where=[*where, Job.cancel_requested.is_(False)],
                reason=reason, **values) is None:
        return False
    HistoryRepository(session).delete_history(job_id)
    return True


def _cancel(session: Session, job_id: str, where: Sequence[ColumnElement[bool]]) -> bool:
    return move_job(session, job_id, "cancelled", where=where, finished_at=utcnow(),
                    stop_reason="cancelled", reason="its cancel was requested") is not None


def hand_back(factory: sessionmaker[Session], job_id: str, run: Claim) -> str | None:
    """Give a run up because its worker shuts down: the job goes back to the queue without
    spending an attempt (the Celery task re-queues its own message). Returns 'requeued',
    'cancelled' (its cancel was requested) or None (the job was no longer this run's)."""
    reason = "its worker shut down; the job starts over on another worker"

    def write() -> str | None:
        with unit_of_work(factory) as session:
            if requeue(session, job_id, where=owned_by(run), reason=reason,
                       count_attempt=False, message_kept=True):
                return "requeued"
            return "cancelled" if _cancel(session, job_id, owned_by(run)) else None
    return retry_on_locked(write)


def _settle(session: Session, settings: Settings, job: Job, *,
            pinned: Sequence[ColumnElement[bool]], lost: str, fail_reason: str | None = None
            ) -> Outcome | None:
    """Apply the policy to the lost run of ``job`` (as observed; ``pinned`` to it)."""
    where = [Job.status == "running", *pinned]
    if job.cancel_requested:
        return Outcome(job.id, "cancelled", lost) if _cancel(session, job.id, where) else None
    limit = settings.max_job_runtime_seconds + settings.runtime_grace_seconds
    now = JobRepository(session).clock()
    running_for = ((now - as_utc(job.started_at)).total_seconds()
                   if job.started_at is not None else None)
    error = fail_reason
    if error is None and running_for is not None and running_for > limit:
        error = (f"the job exceeded the maximum runtime of {settings.max_job_runtime_seconds:g} s "
                 f"(GRADWATCH_MAX_JOB_RUNTIME_SECONDS) and its worker stopped answering ({lost})")
    if error is None and job.attempts >= settings.max_attempts:
        error = (f"worker lost: {lost}; the job was started {job.attempts} times "
                 f"(GRADWATCH_MAX_ATTEMPTS={settings.max_attempts}) and is not retried again")
    if error is None:
        if requeue(session, job.id, where=where, reason=f"worker lost: {lost}"):
            return Outcome(job.id, "requeued", lost)
        return None
    if move_job(session, job.id, "failed", where=where, finished_at=utcnow(), error=error,
                reason=error) is None:
        return None
    return Outcome(job.id, "failed", error)


def reap(factory: sessionmaker[Session], settings: Settings, *, executor: str | None = None
         ) -> list[Outcome]:
    """Settle every running job (of ``executor``) whose heartbeat is older than
    ``heartbeat_timeout_seconds`` by the database's clock."""
    with factory() as session:
        jobs = JobRepository(session)
        now = jobs.clock()
        silent = []
        for job in jobs.running(executor=executor):
            last = job.heartbeat_at or job.started_at
            if last is not None and (now - as_utc(last)).total_seconds() > \
                    settings.heartbeat_timeout_seconds:
                silent.append((job, (now - as_utc(last)).total_seconds()))
    outcomes = []
    for job, silent_for in silent:
        # pinned to what we saw: if the worker beat (or anything moved the job) since, no change
        pinned = [Job.attempts == job.attempts,
                  Job.heartbeat_at.is_(None) if job.heartbeat_at is None
                  else Job.heartbeat_at == job.heartbeat_at]
        lost = f"no heartbeat from worker {job.worker_id} for {silent_for:.0f} s"

        def settle(job: Job = job, pinned: list[ColumnElement[bool]] = pinned,
                   lost: str = lost) -> Outcome | None:
            with unit_of_work(factory) as session:
                return _settle(session, settings, job, pinned=pinned, lost=lost)

        outcome = retry_on_locked(settle)
        if outcome is not None:
            log.warning("job %s %s: %s", outcome.job_id, outcome.action, outcome.detail)
            outcomes.append(outcome)
    return outcomes


def worker_died(factory: sessionmaker[Session], settings: Settings, job_id: str, *,
                worker_id: str, cause: str, fail_reason: str | None = None,
                shutting_down: bool = False) -> Outcome | None:
    """The process ``worker_id`` died (``cause``) while it may have been running ``job_id``:
    settle the job if that worker holds it (None if it never claimed it). ``fail_reason``
    fails the job instead of re-queueing it (e.g. it was killed for overrunning its limit);
    ``shutting_down`` (the server stopped it) re-queues it without spending an attempt."""
    def write() -> Outcome | None:
        with unit_of_work(factory) as session:
            job = JobRepository(session).get(job_id)
            if job is None or job.status != "running" or job.worker_id != worker_id:
                return None
            pinned = [Job.worker_id == worker_id, Job.attempts == job.attempts]
            if shutting_down:
                run = Claim(worker_id, job.attempts)
                if requeue(session, job_id, where=owned_by(run), count_attempt=False,
                           reason=f"{cause}; the job starts over when a server starts"):
                    return Outcome(job_id, "requeued", cause)
            return _settle(session, settings, job, lost=cause, fail_reason=fail_reason,
                           pinned=pinned)
    outcome = retry_on_locked(write)
    if outcome is not None:
        log.warning("job %s %s: %s", outcome.job_id, outcome.action, outcome.detail)
    return outcome
