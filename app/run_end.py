"""How a run ends: its terminal status from the trainer's result, the diagnosis, and the one
conditional move that finishes it (or hands it back). Shared by :func:`app.worker.run_job`
(one job) and :mod:`app.sweep_worker` (a group of sweep members trained batched)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import retry_on_locked, unit_of_work
from app.lifecycle import move_job
from app.models import utcnow
from app.recovery import hand_back
from app.repositories import Claim, ReportRepository, db_now, owned_by
from app.settings import Settings
from app.sink import DatabaseSink

if TYPE_CHECKING:  # the trainer is imported only where jobs run
    from core.trainer import TrainingResult

__all__ = ["STATUS_FOR_STOP", "Finish", "conclude", "describe", "finish_run", "finish_runs",
           "first_non_finite", "give_up"]

log = logging.getLogger(__name__)

STATUS_FOR_STOP: dict[str, str] = {
    "completed": "succeeded",
    "non_finite": "succeeded",
    "early_stop": "succeeded",
    "explosion": "succeeded",
    "cancelled": "cancelled",
    "max_runtime": "failed",
}


def conclude(job_id: str, result: TrainingResult, settings: Settings
             ) -> tuple[str, str | None, dict[str, Any] | None]:
    """``(status, error, report)`` of a finished training: the status its stop reason maps
    to, and the diagnosis (a diagnosis that crashes fails a run that would have succeeded)."""
    stop_reason = str(result.stop_reason)
    status = STATUS_FOR_STOP.get(stop_reason, "succeeded")
    error: str | None = None
    if stop_reason == "max_runtime":
        error = (f"the job exceeded the maximum runtime of {settings.max_job_runtime_seconds:g} s "
                 "(GRADWATCH_MAX_JOB_RUNTIME_SECONDS) and was stopped")
    report: dict[str, Any] | None = None
    try:
        from core.diagnostics import diagnose  # the diagnosis is imported only where jobs run

        report = json.loads(diagnose(result).model_dump_json())
    except Exception as exc:
        log.exception("job %s: diagnosis failed", job_id)
        if status == "succeeded":
            status, error = "failed", f"diagnosis failed: {describe(exc)}"
    return status, error, report


def first_non_finite(result: TrainingResult, sink: DatabaseSink) -> dict[str, Any] | None:
    """The run's first non-finite value: the trainer's, as the sink stored it live."""
    nf = result.first_non_finite
    if nf is None:
        return sink.first_non_finite
    return {"step": nf.step, "layer": nf.layer, "tensor": nf.tensor, "value": nf.value}


@dataclass
class Finish:
    """What :func:`finish_run` writes for one run (see there)."""

    job_id: str
    run: Claim
    status: str
    stop_reason: str | None
    error: str | None
    report: dict[str, Any] | None
    first_non_finite: Any
    steps_completed: int | None
    runtime: float
    also: Callable[[Session], None] | None = None


def _finish_in(session: Session, f: Finish) -> bool:
    """Write ``f`` in ``session``'s transaction; False (nothing to keep) if the job no longer
    runs under ``f.run``."""
    if f.also is not None:
        f.also(session)
    values: dict[str, Any] = {
        "finished_at": utcnow(), "stop_reason": f.stop_reason, "error": f.error,
        "heartbeat_at": db_now(session), "runtime_seconds": f.runtime,
    }
    if f.report is not None:
        values["verdict"] = f.report.get("verdict")
        ReportRepository(session).put(f.job_id, f.report)
    if f.first_non_finite is not None:
        values["first_non_finite"] = f.first_non_finite
    if f.steps_completed is not None:
        values["steps_completed"] = f.steps_completed
    return move_job(session, f.job_id, f.status, where=owned_by(f.run), **values) is not None


def finish_run(factory: sessionmaker[Session], job_id: str, run: Claim, *, status: str,
               stop_reason: str | None, error: str | None, report: dict[str, Any] | None,
               first_non_finite: Any, steps_completed: int | None, runtime: float,
               also: Callable[[Session], None] | None = None) -> bool:
    """Move the job to its terminal ``status`` while it runs under ``run``; True if it moved.
    ``also`` writes more of the run's results in the same transaction (kept only if it moved)."""
    f = Finish(job_id, run, status, stop_reason, error, report, first_non_finite,
               steps_completed, runtime, also)

    def write() -> bool:
        with unit_of_work(factory) as session:
            if not _finish_in(session, f):
                session.rollback()  # the report (and `also`) too: the job is no longer this run's
                return False
            return True
    return retry_on_locked(write)


def finish_runs(factory: sessionmaker[Session], finishes: list[Finish]) -> list[bool]:
    """:func:`finish_run` for several runs in one transaction (one write lock, one commit),
    each in its own savepoint: a run whose job is no longer its own keeps nothing, the others
    are unaffected. If the batch fails, each run is finished on its own."""
    def write() -> list[bool]:
        moved: list[bool] = []
        with unit_of_work(factory) as session:
            for f in finishes:
                savepoint = session.begin_nested()
                ok = _finish_in(session, f)
                if ok:
                    savepoint.commit()
                else:
                    savepoint.rollback()
                moved.append(ok)
        return moved
    try:
        return retry_on_locked(write)
    except Exception:
        log.warning("finishing %d runs together failed; finishing them one by one",
                    len(finishes), exc_info=True)
    return [finish_run(factory, f.job_id, f.run, status=f.status, stop_reason=f.stop_reason,
                       error=f.error, report=f.report, first_non_finite=f.first_non_finite,
                       steps_completed=f.steps_completed, runtime=f.runtime, also=f.also)
            for f in finishes]


def give_up(factory: sessionmaker[Session], job_id: str, run: Claim, sink: DatabaseSink) -> str:
    """A run whose sink gave up: ``'lost'`` (another worker has the job) or the job goes back
    to the queue (the worker is shutting down)."""
    if sink.lost:
        log.warning("job %s was given to another worker; this run stops unrecorded", job_id)
        return "lost"
    outcome = hand_back(factory, job_id, run)
    log.warning("worker shutting down: job %s %s", job_id, outcome or "was no longer ours")
    return "requeued" if outcome == "requeued" else outcome or "lost"


def describe(exc: BaseException, limit: int = 500) -> str:
    """A readable one-line description (database errors without their SQL and parameters)."""
    from sqlalchemy.exc import DBAPIError

    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}"
