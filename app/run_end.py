"""How a run ends: its terminal status from the trainer's result, the diagnosis, and the one
conditional move that finishes it (or hands it back). Shared by :func:`app.worker.run_job`
(one job) and :mod:`app.sweep_worker` (a group of sweep members trained batched)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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

__all__ = ["STATUS_FOR_STOP", "conclude", "describe", "finish_run", "first_non_finite",
           "give_up"]

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


def finish_run(factory: sessionmaker[Session], job_id: str, run: Claim, *, status: str,
               stop_reason: str | None, error: str | None, report: dict[str, Any] | None,
               first_non_finite: Any, steps_completed: int | None, runtime: float,
               also: Callable[[Session], None] | None = None) -> bool:
    """Move the job to its terminal ``status`` while it runs under ``run``; True if it moved.
    ``also`` writes more of the run's results in the same transaction (kept only if it moved)."""
    def write() -> bool:
        with unit_of_work(factory) as session:
            if also is not None:
                also(session)
            values: dict[str, Any] = {
                "finished_at": utcnow(), "stop_reason": stop_reason, "error": error,
                "heartbeat_at": db_now(session), "runtime_seconds": runtime,
            }
            if report is not None:
                values["verdict"] = report.get("verdict")
                ReportRepository(session).put(job_id, report)
            if first_non_finite is not None:
                values["first_non_finite"] = first_non_finite
            if steps_completed is not None:
                values["steps_completed"] = steps_completed
            if move_job(session, job_id, status, where=owned_by(run), **values) is None:
                session.rollback()  # the report (and `also`) too: the job is no longer this run's
                return False
            return True
    return retry_on_locked(write)


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
