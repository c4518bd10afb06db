"""A job's state: the transition table and :func:`move_job`, the only code that changes
``jobs.status``.

Every move is one conditional UPDATE (the job must be in a status the table allows, plus any
``where`` the caller pins, e.g. the worker's claim) and, when it matched, one ``status`` event
of one shape (:func:`status_event`) in the same transaction. Services, the worker, the
recovery policy and both executors call it; nothing else writes ``status``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from app import sweep_notify, webhooks
from app.models import Job
from app.repositories import EventRepository, JobRepository, as_utc, id_batches

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "announce_created",
    "announce_created_many",
    "move_job",
    "move_members",
    "progress_dict",
    "request_cancel",
    "request_cancel_many",
    "sources_of",
    "status_event",
]

# status -> statuses it may move to (DESIGN.md: nothing else moves a job). running -> queued
# is the re-queue of a job whose worker was lost or shut down (app.recovery); its recorded
# history is deleted in the same transaction, so the next run starts it over.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
TERMINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


def sources_of(target: str) -> list[str]:
    """Statuses from which ``target`` may be reached."""
    return [s for s, targets in TRANSITIONS.items() if target in targets]


def progress_dict(steps_completed: int, total_steps: int, *,
                  started_at: datetime | None = None, now: datetime | None = None
                  ) -> dict[str, Any]:
    """``progress`` of a job: ``step`` counts the optimizer steps completed (0..total_steps);
    with ``started_at`` and ``now`` (a running job) also the elapsed seconds and an ETA
    extrapolated from the steps per second so far (null until a step completed)."""
    fraction = min(1.0, steps_completed / total_steps) if total_steps else 0.0
    out: dict[str, Any] = {"step": steps_completed, "total_steps": total_steps,
                           "fraction": round(fraction, 6)}
    if started_at is not None and now is not None:
        elapsed = max(0.0, (as_utc(now) - as_utc(started_at)).total_seconds())
        out["elapsed_seconds"] = round(elapsed, 3)
        remaining = max(0, total_steps - steps_completed)
        out["eta_seconds"] = (round(elapsed / steps_completed * remaining, 3)
                              if steps_completed > 0 else None)
    return out


def status_event(job: Job, *, reason: str | None = None) -> dict[str, Any]:
    """The ``status`` event of ``job`` as it is now: the one shape every status event has.
    ``requeued`` is true on the ``queued`` event of a job that goes back to the queue (the
    only way into ``queued`` after its creation)."""
    return {
        "status": job.status,
        "terminal": job.status in TERMINAL,
        "requeued": job.status == "queued" and reason is not None,
        "stop_reason": job.stop_reason,
        "verdict": job.verdict,
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": bool(job.cancel_requested),
        "reason": reason,
        "progress": progress_dict(job.steps_completed, job.total_steps),
    }


def _event(session: Session, job_id: str, reason: str | None) -> Job | None:
    job = session.get(Job, job_id, populate_existing=True)
    if job is not None:
        EventRepository(session).append(job_id, "status", status_event(job, reason=reason))
    return job


def move_job(session: Session, job_id: str, to: str, *, expect: Sequence[str] | None = None,
             where: Sequence[ColumnElement[bool]] = (), reason: str | None = None,
             **fields: Any) -> Job | None:
    """Move ``job_id`` to ``to`` if the transition table allows it from its current status
    (narrowed to ``expect`` if given) and every ``where`` holds; set ``fields`` with it and
    append its ``status`` event. Returns the moved job, or None if nothing matched.

    The caller owns the transaction (the move and its event commit together)."""
    sources = sources_of(to)
    if expect is not None:
        sources = [s for s in sources if s in expect]
    # a member of a sweep with a webhook: lock the sweep first (app.sweep_notify: exactly once)
    sweep_id = sweep_notify.lock_for_finish(session, job_id) if to in TERMINAL else None
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(sources), *where)
        .values(status=to, **fields).execution_options(synchronize_session=False))
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    job = _event(session, job_id, reason)
    if to in TERMINAL:  # webhooks: in this transaction (an outbox), after the diagnosis
        webhooks.job_finished(session, job_id)
        if sweep_id is not None:
            sweep_notify.member_finished(session, sweep_id)
    return job


def move_members(session: Session, sweep_id: str, job_ids: Sequence[str], to: str, *,
                 expect: Sequence[str] | None = None, reason: str | None = None,
                 **fields: Any) -> list[Job]:
    """:func:`move_job` for many members of the sweep ``sweep_id`` at once (its queued members
    when it is cancelled): the same moves, ``status`` events, webhooks and sweep
    notification, in a few statements per :data:`ID_BATCH` members rather than ~10 per
    member. Returns the members moved (those whose status allowed it)."""
    sources = sources_of(to)
    if expect is not None:
        sources = [s for s in sources if s in expect]
    # the sweep before any member's row, as move_job does (app.sweep_notify: exactly once)
    notify = to in TERMINAL and bool(job_ids) and sweep_notify.lock_sweep(session, sweep_id)
    moved: list[str] = []
    for batch in id_batches(job_ids):
        moved += session.scalars(
            update(Job).where(Job.id.in_(batch),
                              Job.parent_sweep_id == sweep_id, Job.status.in_(sources))
            .values(status=to, **fields).returning(Job.id)
            .execution_options(synchronize_session=False)).all()
    jobs = _reread(session, moved)
    EventRepository(session).append_many(
        [(job.id, "status", status_event(job, reason=reason)) for job in jobs])
    if to in TERMINAL and jobs:  # webhooks: in this transaction (an outbox)
        webhooks.jobs_finished(session, jobs)
        if notify:
            sweep_notify.member_finished(session, sweep_id)
    return jobs


def request_cancel_many(session: Session, job_ids: Sequence[str]) -> list[Job]:
    """:func:`request_cancel` for many jobs (a cancelled sweep's running members): the flags
    and their events in a few statements per :data:`ID_BATCH` jobs. Returns the jobs flagged
    now (running, not flagged before)."""
    flagged: list[str] = []
    for batch in id_batches(job_ids):
        flagged += session.scalars(
            update(Job).where(Job.id.in_(batch),
                              Job.status == "running", Job.cancel_requested.is_(False))
            .values(cancel_requested=True).returning(Job.id)
            .execution_options(synchronize_session=False)).all()
    jobs = _reread(session, flagged)
    EventRepository(session).append_many(
        [(job.id, "status", status_event(job, reason="cancel requested")) for job in jobs])
    return jobs


def _reread(session: Session, job_ids: Sequence[str]) -> list[Job]:
    """The jobs as the database has them now (after UPDATEs this session did not track)."""
    jobs: list[Job] = []
    for batch in id_batches(job_ids):
        jobs += session.scalars(
            select(Job).where(Job.id.in_(batch))
            .execution_options(populate_existing=True)).all()
    return jobs


def announce_created(session: Session, job: Job) -> None:
    """The first ``status`` event of a job just inserted as ``queued``."""
    EventRepository(session).append(job.id, "status", status_event(job))


def announce_created_many(session: Session, jobs: Sequence[Job]) -> None:
    """:func:`announce_created` for many jobs just inserted as ``queued`` with ``event_seq``
    1 (a sweep's members): the same events, numbered 1, in one INSERT."""
    assert all(job.event_seq == 1 for job in jobs)
    EventRepository(session).append_first(
        [(job.id, "status", status_event(job)) for job in jobs])


def request_cancel(session: Session, job_id: str) -> Job | None:
    """Flag a running job for cancelling (its worker stops within one flush); the first
    request appends a ``status`` event with ``cancel_requested: true``, repeats add nothing.
    Returns the job, or None if it is not running."""
    if JobRepository(session).flag_cancel(job_id):
        return _event(session, job_id, "cancel requested")
    job = session.get(Job, job_id, populate_existing=True)
    return job if job is not None and job.status == "running" else None
