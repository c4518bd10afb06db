"""Training sweep members batched: the worker that picks up one member trains its group.

When a worker gets a sweep member's job id, it claims that job and every still-queued sibling
that can share its stack (``core.batched.stack_key``; at most ``MAX_GROUP``, and no more than
fit together in the job memory budget, ``core.stack_data.members_that_fit``), trains them as
one :class:`core.batched.BatchedTrainer` with one :class:`app.sink.DatabaseSink` per member
(so each member's history, events, cancel flag, claim and hand-back are exactly a job's;
the sinks take the stack's rows as blocks, ``DatabaseSink.write_block``; a member's last
records are written with its terminal move, ``DatabaseSink.close(session)``), then
diagnoses and finishes each member as ``run_job`` finishes a job (:mod:`app.run_end`; up to
``FINISH_BATCH`` members per transaction, each in its own savepoint). Every
member moves through :func:`app.lifecycle.move_job`, as every job does. The workers that later receive the
siblings' ids find them no longer queued and skip them; with several workers, each group is
taken by whichever worker reaches one of its members first.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import keep_models
from app.blobstore import blob_store
from app.datasets import attach_uploaded_once
from app.db import retry_on_locked, unit_of_work
from app.heartbeat import Heartbeat
from app.lifecycle import move_job
from app.models import Job, SweepMemberRow
from app.quotas import start_allowance
from app.repositories import Claim, JobRepository, db_now
from app.run_end import (
    Finish,
    conclude,
    describe,
    finish_run,
    finish_runs,
    first_non_finite,
    give_up,
)
from app.settings import Settings
from app.sink import DatabaseSink
from app.worker_process import WorkerContext, handback_due
from core.batched import BatchedTrainer, stack_key
from core.model_io import Model
from core.spec import TrainingSpec
from core.stability import peak_to_baseline, predicted_risk
from core.stack_data import members_that_fit
from core.sweep import SweepMember
from core.trainer import TrainingResult

__all__ = ["MAX_GROUP", "run_sweep_group"]

log = logging.getLogger(__name__)

MAX_GROUP = 256
MAX_FLUSH_INTERVAL = 30.0
# members finished per transaction: one write lock and commit for many, held briefly
FINISH_BATCH = 16


def _sweep_of(factory: sessionmaker[Session], job_id: str) -> tuple[str | None, str | None]:
    """(sweep id, status) of job ``job_id`` (Nones if it does not exist): one read."""
    with factory() as session:
        row = session.execute(select(Job.parent_sweep_id, Job.status)
                              .where(Job.id == job_id)).first()
        return (None, None) if row is None else (row[0], row[1])


def run_sweep_group(job_id: str, ctx: WorkerContext) -> str | None:
    """Train ``job_id``'s group if it is a sweep member (its final status, or ``'skipped'``
    when it was no longer queued); None when it is not a sweep member."""
    factory, settings = ctx.factory, ctx.settings
    sweep_id, status = _sweep_of(factory, job_id)
    if sweep_id is None:
        return None
    if status != "queued":  # trained in a sibling's group: no write transaction to find out
        return "skipped"  # (re-queued later, it is sent again: app.recovery, app.dispatch)
    claimed = retry_on_locked(lambda: _claim_group(factory, job_id, sweep_id, ctx.worker_id,
                                                   max(1, settings.workers), settings))
    if not claimed:
        return "skipped"
    beats = {jid: Heartbeat(jid, claim, factory, settings.heartbeat_interval_seconds)
             for jid, claim, _ in claimed}
    stop = threading.Event()
    beater = threading.Thread(target=_beat_all, args=(factory, claimed, beats, stop,
                                                      settings.heartbeat_interval_seconds),
                              name=f"heartbeat-sweep-{sweep_id[:8]}", daemon=True)
    beater.start()
    try:
        statuses = _train_group(ctx, claimed, beats)
    finally:
        stop.set()
        beater.join(timeout=10)
    return statuses.get(job_id, "failed")


def _claim_group(factory: sessionmaker[Session], job_id: str, sweep_id: str, worker_id: str,
                 workers: int, settings: Settings) -> list[tuple[str, Claim, dict[str, Any]]]:
    """Claim ``job_id`` (first) and its queued siblings of the same stack key: an equal share
    of them per worker (``workers``: how many share this queue), so that a large group
    spreads over the workers instead of leaving them idle."""
    with unit_of_work(factory) as session:
        own = session.get(Job, job_id)
        if own is None or own.status != "queued":
            return []
        own_spec = TrainingSpec.model_validate(own.spec)
        key = stack_key(own_spec)
        siblings = session.scalars(
            select(Job).where(Job.parent_sweep_id == sweep_id, Job.status == "queued",
                              Job.id != job_id).order_by(Job.created_at, Job.id)).all()
        group, specs = [own], [own_spec]
        for job in siblings:
            spec = TrainingSpec.model_validate(job.spec)
            if stack_key(spec) == key:
                group.append(job)
                specs.append(spec)
        size = min(MAX_GROUP, -(-(len(group) + _running_siblings(session, sweep_id)) // workers))
        # each member fit the job memory budget alone; the stack holds them all at once
        fit = members_that_fit(specs[:size], settings.max_job_memory_bytes,
                               settings.diagnosis_max_records)
        if fit < size:
            log.info("sweep %s: %d members a stack, not %d, to stay within the job memory "
                     "budget (GRADWATCH_MAX_JOB_MEMORY_BYTES)", sweep_id, fit, size)
            size = fit
        size = start_allowance(session, job_id, settings, max(size, 1))  # tenant's quota
        if size == 0:
            return []
        out = []
        now = db_now(session)
        for job in group[:max(size, 1)]:
            moved = move_job(session, job.id, "running", started_at=now, heartbeat_at=now,
                             worker_id=worker_id, attempts=Job.attempts + 1)
            if moved is None:
                if job is own:  # another worker's group took it since it was read: that
                    return []  # worker trains it; claim nothing (no orphaned sibling)
                continue
            job = moved
            out.append((job.id, Claim(worker_id, job.attempts),
                        {"spec": job.spec, "total_steps": job.total_steps}))
        return out


def _running_siblings(session: Session, sweep_id: str) -> int:
    """Members of the sweep already running (their share was taken by other workers)."""
    return len(session.scalars(select(Job.id).where(Job.parent_sweep_id == sweep_id,
                                                    Job.status == "running")).all())


def _beat_all(factory: sessionmaker[Session], claimed: list[tuple[str, Claim, dict[str, Any]]],
              beats: dict[str, Heartbeat], stop: threading.Event, interval: float) -> None:
    """One heartbeat thread for the whole group: one transaction stamps every member."""
    while not stop.wait(interval):
        try:
            with unit_of_work(factory) as session:
                jobs = JobRepository(session)
                alive = {jid: jobs.heartbeat(jid, claim) for jid, claim, _ in claimed}
        except Exception:  # the database is away: try again next beat
            log.warning("sweep group heartbeat failed", exc_info=True)
            continue
        for jid, ok in alive.items():
            if not ok and not stop.is_set():
                beats[jid].lost.set()


def _train_group(ctx: WorkerContext, claimed: list[tuple[str, Claim, dict[str, Any]]],
                 beats: dict[str, Heartbeat]) -> dict[str, str]:
    settings, factory = ctx.settings, ctx.factory
    started = time.monotonic()
    ids = [jid for jid, _, _ in claimed]
    sinks: list[DatabaseSink] = []
    try:
        specs = [TrainingSpec.model_validate(row["spec"],
                                             context={"limits": settings.spec_limits()})
                 for _, _, row in claimed]
        # A group's step feeds every member's sink: each flushes on its step count, or after
        # the interval times the group size, so the group writes about as often as one job.
        interval = min(settings.flush_interval_seconds * len(claimed), MAX_FLUSH_INTERVAL)
        sinks = [DatabaseSink(
            jid, factory, total_steps=row["total_steps"], flush_every=settings.flush_every_steps,
            flush_interval=max(interval, settings.flush_interval_seconds),
            progress_interval=settings.progress_event_interval_seconds, claim=claim,
            heartbeat=beats[jid], handback_due=handback_due) for jid, claim, row in claimed]
        attach_uploaded_once(specs, blob_store(settings))
        trainer = BatchedTrainer(specs, max_runtime=settings.max_job_runtime_seconds)
        results = trainer.run(sinks, max_records=settings.diagnosis_max_records)
    except Exception as exc:  # a training crash fails the group's jobs, never the worker
        log.exception("sweep group %s failed", ids)
        message = f"training failed: {describe(exc)}"
        for jid, claim, _ in claimed:
            finish_run(factory, jid, claim, status="failed", stop_reason=None, error=message,
                       report=None, first_non_finite=None, steps_completed=None,
                       runtime=time.monotonic() - started)
        return dict.fromkeys(ids, "failed")
    statuses: dict[str, str] = {}
    pending: list[Finish] = []
    for k, ((jid, claim, _), spec, sink, result) in enumerate(
            zip(claimed, specs, sinks, results, strict=True)):
        if sink.given_up:  # given to another worker, or handed back at shutdown
            statuses[jid] = give_up(factory, jid, claim, sink)
            continue
        keep_models(settings, jid, partial(Model.from_member, trainer, k, job_id=jid,
                                           step=int(result.steps_completed),
                                           stop_reason=str(result.stop_reason)))
        pending.append(_conclude_member(ctx, jid, claim, spec, sink, result,
                                        time.monotonic() - started))
        if len(pending) == FINISH_BATCH:
            _finish_members(factory, pending, statuses)
            pending = []
    _finish_members(factory, pending, statuses)
    return statuses


def _finish_members(factory: sessionmaker[Session], pending: list[Finish],
                    statuses: dict[str, str]) -> None:
    """Finish diagnosed members together (one transaction); their statuses into ``statuses``."""
    if not pending:
        return
    for f, moved in zip(pending, finish_runs(factory, pending), strict=True):
        statuses[f.job_id] = f.status if moved else "lost"


def _conclude_member(ctx: WorkerContext, job_id: str, claim: Claim, spec: TrainingSpec,
                     sink: DatabaseSink, result: TrainingResult, runtime: float) -> Finish:
    """Diagnose a member; what finishing it writes, with its figures and preflight's risk."""
    status, error, report = conclude(job_id, result, ctx.settings)
    risk: str | None = None
    try:
        risk = predicted_risk(SweepMember(0, {}, spec))
    except Exception:
        log.exception("job %s: preflight risk failed", job_id)

    figures = {"first_bad_step": report.get("first_bad_step") if report else None,
               "peak_to_baseline": peak_to_baseline(result), "final_loss": result.final_loss,
               "predicted_risk": risk}

    def store_figures(session: Session) -> None:  # in the transaction that finishes the job:
        sink.close(session)  # the last records, then the figures (a lost run keeps none)
        session.execute(update(SweepMemberRow).where(SweepMemberRow.job_id == job_id)
                        .values(**figures).execution_options(synchronize_session=False))

    return Finish(job_id, claim, status, str(result.stop_reason), error, report,
                  first_non_finite(result, sink), int(result.steps_completed), runtime,
                  store_figures)
