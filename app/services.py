"""Units of work behind the endpoints. Services never commit: the caller's session does.

Creating a job (:func:`submit_job`: its id is enqueued only after the caller commits) lives
in :mod:`app.submission`, the readiness checks in :mod:`app.readiness`; both are re-exported
here, where the endpoints import them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import history
from app.artifacts import forget_models
from app.data_scale import uploaded_scale
from app.datasets import parent_lookup
from app.diagnosis_cache import PROVISIONAL
from app.errors import (
    ConflictError,
    NotFoundError,
    ProblemError,
    SpecValidationError,
)
from app.history import HistoryQuery, stored_history
from app.jsonutil import encode_non_finite
from app.lifecycle import (
    TERMINAL,
    move_job,
    progress_dict,
    request_cancel,
)
from app.models import Job, Sweep, utcnow
from app.readiness import readiness
from app.repositories import (
    EventRepository,
    HistoryRepository,
    JobRepository,
    ReportRepository,
)
from app.settings import Settings
from app.specs import preflight_spec, validate_spec
from app.submission import Submitted, submit_job
from app.tenancy import ADMIN, Principal
from core.telemetry import NonFiniteEvent

__all__ = [
    "HistoryQuery",
    "ProblemError",
    "Submitted",
    "cancel_job",
    "compare",
    "delete_job",
    "diagnostics",
    "get_job",
    "gradient_history",
    "gradient_page",
    "job_events",
    "job_snapshot",
    "job_to_read",
    "job_to_summary",
    "list_jobs",
    "metrics_history",
    "metrics_page",
    "preflight_spec",
    "readiness",
    "repair_job",
    "submit_job",
    "validate_spec",
]

# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


def get_job(session: Session, job_id: str, principal: Principal) -> Job:
    """The job, if ``principal`` may see it; otherwise the same 404 as for a missing job.
    Every look-up of a job by id from a request goes through here."""
    job = JobRepository(session).get(job_id)
    if job is None or not principal.can_see(job.tenant):
        raise NotFoundError(f"job {job_id} does not exist (or was deleted)", slug="job-not-found")
    return job


def encode_cursor(job: Job | Sweep) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        if "\x00" in str(job_id):
            raise ValueError("NUL")
        return datetime.fromisoformat(created), str(job_id)
    except Exception:
        raise SpecValidationError(
            "cursor is not valid: pass the next_cursor of a previous page unchanged",
            slug="invalid-cursor",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from None


def cursor_position(session: Session, cursor: str | None) -> tuple[datetime, str] | None:
    """The (created_at, id) a ``cursor`` points after, comparable with the database's
    column (SQLite stores naive UTC); None without a cursor; 422 for a bad one."""
    after = _decode_cursor(cursor) if cursor else None
    if after is not None and after[0].tzinfo is not None and session.get_bind().dialect.name == "sqlite":
        after = (after[0].replace(tzinfo=None), after[1])
    return after


def list_jobs(session: Session, *, principal: Principal, limit: int, cursor: str | None,
              statuses: Sequence[str], verdicts: Sequence[str], parent_id: str | None,
              tenant: str | None = None, sweep_members: bool = True
              ) -> tuple[list[Job], str | None]:
    """A page of the jobs ``principal`` may see (the admin: all, or ``tenant``'s)."""
    after = cursor_position(session, cursor)
    items = JobRepository(session).page(limit=limit + 1, statuses=statuses, verdicts=verdicts,
                                        parent_id=parent_id, after=after,
                                        tenant=principal.scope(tenant),
                                        sweep_members=sweep_members)
    next_cursor = encode_cursor(items[limit - 1]) if len(items) > limit else None
    return items[:limit], next_cursor


def cancel_job(session: Session, job_id: str, principal: Principal) -> Job:
    """Cancel a queued job now, or flag a running one (its worker stops within one flush)."""
    get_job(session, job_id, principal)
    job = (move_job(session, job_id, "cancelled", expect=["queued"], finished_at=utcnow(),
                    stop_reason="cancelled")
           or request_cancel(session, job_id))
    if job is None:
        status = JobRepository(session).status_of(job_id)
        raise ConflictError(f"job {job_id} is already {status}; only queued or running jobs "
                            "can be cancelled", slug="job-not-cancellable", status_now=status)
    return job


def delete_job(session: Session, job_id: str, principal: Principal) -> None:
    """Delete a terminal job and its history; frees its Idempotency-Key."""
    job = get_job(session, job_id, principal)
    if not JobRepository(session).delete(job_id, statuses=TERMINAL):
        raise ConflictError(f"job {job_id} is {job.status}; cancel it first — only finished jobs "
                            "can be deleted", slug="job-not-finished", status_now=job.status)
    forget_models(session, job_id)  # its model files go once the deletion commits


def job_links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "gradients": f"{base}/gradients", "metrics": f"{base}/metrics",
            "diagnostics": f"{base}/diagnostics", "events": f"{base}/events",
            "cancel": f"{base}/cancel", "repair": f"{base}/repair",
            "comparison": f"{base}/comparison", "model": f"{base}/model",
            "predict": f"{base}/predict", "metrics_csv": f"{base}/metrics.csv",
            "gradients_csv": f"{base}/gradients.csv"}


def job_to_summary(job: Job) -> dict[str, Any]:
    """The job resource without its spec."""
    nf = job.first_non_finite
    running = job.status == "running" and job.started_at is not None
    return {
        "id": job.id, "name": job.name, "status": job.status, "verdict": job.verdict,
        "stop_reason": job.stop_reason, "error": job.error,
        "cancel_requested": job.cancel_requested, "created_at": job.created_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
        "progress": progress_dict(job.steps_completed, job.total_steps,
                                  started_at=job.started_at if running else None,
                                  now=utcnow() if running else None),
        "latest": job.latest,
        "first_non_finite": {**nf, "description": NonFiniteEvent(**nf).describe()} if nf else None,
        "runtime_seconds": job.runtime_seconds, "parent_id": job.parent_id,
        "parent_sweep_id": job.parent_sweep_id, "launched_from": job.launched_from,
        "attempts": job.attempts, "request_id": job.request_id, "tenant": job.tenant,
        "links": {**job_links(job.id),
                  **({"webhook": f"/v1/webhooks/{job.id}"} if job.spec.get("notify") else {})},
    }


def job_to_read(job: Job) -> dict[str, Any]:
    """The job resource."""
    return {**job_to_summary(job), "spec": job.spec, "repair": job.repair}


def gradient_history(session: Session, job_id: str, q: HistoryQuery, *, layer: int | None,
                     metrics: list[str] | None, principal: Principal = ADMIN) -> dict[str, Any]:
    """Per-layer series of a job (see :func:`app.history.gradient_history`)."""
    return history.gradient_history(session, get_job(session, job_id, principal), q,
                                    layer=layer, metrics=metrics)


def metrics_history(session: Session, job_id: str, q: HistoryQuery, *,
                    metrics: list[str] | None, principal: Principal = ADMIN) -> dict[str, Any]:
    """Network-level series and epoch figures of a job (see :mod:`app.history`)."""
    return history.metrics_history(session, get_job(session, job_id, principal), q,
                                   metrics=metrics)


def gradient_page(session: Session, job_id: str, q: HistoryQuery, *, principal: Principal,
                  layer: int | None, metrics: list[str] | None) -> history.HistoryPage:
    """One response of a job's per-layer series (see :func:`app.history.gradient_page`)."""
    return history.gradient_page(session, get_job(session, job_id, principal), q, layer=layer,
                                 metrics=metrics)


def metrics_page(session: Session, job_id: str, q: HistoryQuery, *, principal: Principal,
                 metrics: list[str] | None) -> history.HistoryPage:
    """One response of a job's network-level series (see :func:`app.history.metrics_page`)."""
    return history.metrics_page(session, get_job(session, job_id, principal), q, metrics=metrics)


def job_snapshot(factory: sessionmaker[Session], job_id: str, principal: Principal
                 ) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` shows it, read in a session of its own (for a stream
    that outlives its request); 404 if it does not exist (for ``principal``)."""
    with factory() as session:
        return job_to_summary(get_job(session, job_id, principal))


def job_events(factory: sessionmaker[Session], job_id: str, after_seq: int
               ) -> tuple[list[tuple[int, str, Any]], str | None]:
    """The job's events after ``after_seq``, oldest first (a page of at most 500), and its
    status now (None: the job no longer exists), read in a session of their own."""
    with factory() as session:
        events = [(e.seq, e.type, e.data)
                  for e in EventRepository(session).since(job_id, after_seq)]
        return events, JobRepository(session).status_of(job_id)


def diagnostics(session: Session, job_id: str, settings: Settings,
                principal: Principal = ADMIN) -> dict[str, Any]:
    """The stored final report, or a provisional one built from the records so far (one
    computation per job and point of progress, shared by concurrent readers)."""
    job = get_job(session, job_id, principal)
    stored = ReportRepository(session).get(job_id)
    if stored is not None:
        return stored.report
    key = (job.id, job.status, job.steps_completed, job.event_seq)

    def compute() -> dict[str, Any]:
        from core.diagnostics import diagnose

        stored_run = stored_history(session, job, settings)
        # an uploaded data set's scale, as the worker's diagnosis has it (cached per data set)
        report = diagnose(stored_run, scale=uploaded_scale(stored_run.spec, settings))
        data: dict[str, Any] = json.loads(report.model_dump_json())
        if job.status in TERMINAL:
            data["final"] = True
        return data

    result: dict[str, Any] = PROVISIONAL.get(key, compute)
    return result


def repair_job(session: Session, job_id: str, settings: Settings, *, principal: Principal,
               recommendation: int | None, spec_patch: dict[str, Any] | None,
               idempotency_key: str | None) -> Submitted:
    """A child job running the parent's spec with a recommendation's merge patch applied;
    it belongs to the parent's tenant (also when the admin asks for it)."""
    from core.diagnostics import apply_merge_patch

    parent = get_job(session, job_id, principal)
    if spec_patch is not None and recommendation is not None:
        raise SpecValidationError("give either recommendation or spec_patch, not both",
                                  slug="validation-error")
    action: str | None = None
    if spec_patch is None:
        index = recommendation or 0
        report = diagnostics(session, job_id, settings, principal)
        recs = report.get("recommendations") or []
        if not recs:
            raise ConflictError(
                f"the diagnosis of job {job_id} (verdict {report.get('verdict')!r}) has no "
                "recommendation to apply; pass your own spec_patch", slug="nothing-to-repair")
        if index >= len(recs):
            raise SpecValidationError(
                f"recommendation {index} does not exist; the diagnosis has {len(recs)}",
                slug="validation-error",
                errors=[{"loc": ["body", "recommendation"], "msg": "out of range",
                         "type": "less_than"}])
        spec_patch = recs[index]["spec_patch"]
        action = recs[index].get("action")
        recommendation = index
    patched = apply_merge_patch(parent.spec, spec_patch)
    spec = validate_spec(patched, settings, loc_prefix=("patched_spec",),
                         uploaded=parent_lookup(session, parent.dataset_id))
    return submit_job(session, spec=spec, settings=settings, tenant=parent.tenant,
                      idempotency_key=idempotency_key, parent_id=parent.id,
                      repair={"parent_id": parent.id, "recommendation": recommendation,
                              "action": action, "spec_patch": spec_patch})


def _figures(session: Session, job: Job, settings: Settings) -> dict[str, Any]:
    figures = history.run_figures(session, job.id)
    epochs = HistoryRepository(session).epochs(job.id)
    report = ReportRepository(session).get(job.id)
    nf = job.first_non_finite
    figures_json: dict[str, Any] = encode_non_finite({
        "job_id": job.id, "status": job.status, "verdict": job.verdict,
        "stop_reason": job.stop_reason, "steps_completed": job.steps_completed,
        "total_steps": job.total_steps, **figures,
        "first_bad_step": report.report.get("first_bad_step") if report else None,
        "first_non_finite_step": nf["step"] if nf else None,
        "final_val_loss": epochs[-1].val_loss if epochs else None,
        "final_val_accuracy": epochs[-1].val_accuracy if epochs else None,
        "runtime_seconds": job.runtime_seconds,
    })
    return figures_json


def compare(session: Session, job_id: str, settings: Settings, *, principal: Principal,
            other: str | None) -> dict[str, Any]:
    """A job and its repair (or ``other``) side by side; both must be visible."""
    job = get_job(session, job_id, principal)
    if other is not None:
        second = get_job(session, other, principal)
        original, repair = (second, job) if job.parent_id == second.id else (job, second)
    elif job.parent_id is not None:
        original, repair = get_job(session, job.parent_id, principal), job
    else:
        children = JobRepository(session).page(limit=1, parent_id=job.id,
                                               tenant=principal.scope(None))
        if not children:
            raise NotFoundError(f"job {job_id} has no repair job to compare with; create one "
                                f"with POST /v1/jobs/{job_id}/repair", slug="no-repair")
        original, repair = job, children[0]
    a, b = _figures(session, original, settings), _figures(session, repair, settings)
    return {"original": a, "repair": b,
            "spec_patch": (repair.repair or {}).get("spec_patch"),
            "summary": _compare_summary(a, b)}


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _compare_summary(a: dict[str, Any], b: dict[str, Any]) -> str:
    parts = [f"verdict {a['verdict'] or a['status']} -> {b['verdict'] or b['status']}"]
    ga, gb = _num(a["max_grad_norm"]), _num(b["max_grad_norm"])
    if ga is not None and gb is not None:
        parts.append(f"peak gradient norm {ga:.3g} -> {gb:.3g}")
    la, lb = _num(a["final_loss"]), _num(b["final_loss"])
    if la is not None and lb is not None:
        parts.append(f"final loss {la:.4g} -> {lb:.4g}")
    if a["first_non_finite_step"] is not None and b["first_non_finite_step"] is None:
        parts.append("the repair has no NaN/Inf")
    return "; ".join(parts)
