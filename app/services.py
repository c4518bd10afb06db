"""Units of work behind the endpoints. Services never commit: the caller's session does.

Job ids are handed to the executor only after the transaction that created them committed
(see :func:`submit_job` and the router that calls it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.downsampling import (
    LAYER_METRICS,
    MAX_LEVEL,
    MIN_LEVEL,
    STEP_METRICS,
    Summary,
    cover,
    downsample_points,
    in_step_order,
    plan_buckets,
    unpack_blocks,
)
from app.errors import (
    ConflictError,
    NotFoundError,
    ProblemError,
    SpecValidationError,
    validation_errors,
)
from app.jsonutil import encode_non_finite
from app.models import Job, utcnow
from app.repositories import (
    TERMINAL,
    EventRepository,
    HistoryRepository,
    JobRepository,
    ReportRepository,
)
from app.settings import Settings
from app.worker import describe_non_finite, progress_dict
from core.spec import TrainingSpec

__all__ = [
    "HistoryQuery",
    "ProblemError",
    "cancel_job",
    "compare",
    "delete_job",
    "diagnostics",
    "get_job",
    "gradient_history",
    "job_to_read",
    "list_jobs",
    "metrics_history",
    "repair_job",
    "submit_job",
    "validate_spec",
]

IDEMPOTENCY_IN_FLIGHT = timedelta(seconds=30)


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def validate_spec(body: Any, settings: Settings, *, loc_prefix: tuple[str | int, ...] = ("body",)
                  ) -> TrainingSpec:
    """The validated spec, or a 422 naming each bad field (and any exceeded limit)."""
    if not isinstance(body, dict):
        raise SpecValidationError(
            "the request body must be a JSON object (a TrainingSpec)",
            errors=[{"loc": list(loc_prefix), "msg": "expected a JSON object", "type": "dict_type"}])
    try:
        return TrainingSpec.model_validate(body, context={"limits": settings.spec_limits()})
    except ValidationError as exc:
        errors = validation_errors(exc.errors(include_url=False), loc_prefix)
        limits = [e for e in errors if e["type"] == "limit_exceeded"]
        first = (limits or errors)[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecValidationError(
            f"{where}: {first['msg']}{more}",
            slug="limit-exceeded" if limits else "validation-error",
            errors=errors) from None


def echoed_spec(spec: TrainingSpec) -> dict[str, Any]:
    """The spec with every default filled in (absent optionals explicit null)."""
    data: dict[str, Any] = spec.model_dump(mode="json")
    return data


def spec_hash(spec_json: dict[str, Any]) -> str:
    canonical = json.dumps(spec_json, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


@dataclass
class Submitted:
    job: Job
    created: bool  # False: an earlier request with the same Idempotency-Key made it


def submit_job(session: Session, *, spec: TrainingSpec, settings: Settings,
               idempotency_key: str | None = None, parent_id: str | None = None,
               repair: dict[str, Any] | None = None) -> Submitted:
    """Insert a queued job (the caller commits, then enqueues ``job.id``)."""
    spec_json = echoed_spec(spec)
    digest = spec_hash(spec_json)
    jobs = JobRepository(session)
    if idempotency_key is not None:
        existing = jobs.by_idempotency_key(idempotency_key)
        if existing is not None:
            return Submitted(_replay(existing, digest, parent_id), created=False)
    job = Job(
        id=str(uuid.uuid4()), status="queued", name=spec.name, spec=spec_json, spec_hash=digest,
        idempotency_key=idempotency_key, parent_id=parent_id, repair=repair,
        executor=settings.executor, created_at=utcnow(), total_steps=spec.total_steps(),
        steps_completed=0, cancel_requested=False, event_seq=0,
    )
    try:
        with session.begin_nested():
            jobs.add(job)
    except IntegrityError:
        # a concurrent request with the same key won the insert
        existing = jobs.by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise ConflictError(
                "a request with this Idempotency-Key is still being processed; retry shortly",
                slug="idempotency-in-flight", headers={"Retry-After": "1"}) from None
        return Submitted(_replay(existing, digest, parent_id), created=False)
    EventRepository(session).append(job.id, "status", {
        "status": "queued", "terminal": False,
        "progress": progress_dict(0, job.total_steps)})
    return Submitted(job, created=True)


def _replay(existing: Job, digest: str, parent_id: str | None) -> Job:
    if existing.spec_hash != digest or existing.parent_id != parent_id:
        raise SpecValidationError(
            f"Idempotency-Key was already used for job {existing.id} with a different spec; "
            "use a new key for a different request",
            slug="idempotency-key-reused", job_id=existing.id)
    if existing.enqueued_at is None and existing.status == "queued":
        created = existing.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=utcnow().tzinfo)
        if utcnow() - created < IDEMPOTENCY_IN_FLIGHT:
            raise ConflictError(
                "the first request with this Idempotency-Key is still being processed; "
                "retry shortly", slug="idempotency-in-flight", headers={"Retry-After": "1"})
    return existing


def get_job(session: Session, job_id: str) -> Job:
    job = JobRepository(session).get(job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist (or was deleted)", slug="job-not-found")
    return job


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        return datetime.fromisoformat(created), str(job_id)
    except Exception:
        raise SpecValidationError(
            "cursor is not valid: pass the next_cursor of a previous page unchanged",
            slug="invalid-cursor",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from None


def list_jobs(session: Session, *, limit: int, cursor: str | None, statuses: Sequence[str],
              verdicts: Sequence[str], parent_id: str | None) -> tuple[list[Job], str | None]:
    after = _decode_cursor(cursor) if cursor else None
    if after is not None and after[0].tzinfo is not None and session.get_bind().dialect.name == "sqlite":
        after = (after[0].replace(tzinfo=None), after[1])
    items = JobRepository(session).page(limit=limit + 1, statuses=statuses, verdicts=verdicts,
                                        parent_id=parent_id, after=after)
    next_cursor = _encode_cursor(items[limit - 1]) if len(items) > limit else None
    return items[:limit], next_cursor


def cancel_job(session: Session, job_id: str) -> Job:
    """Cancel a queued job now, or flag a running one (its worker stops within one flush)."""
    jobs = JobRepository(session)
    job = get_job(session, job_id)
    events = EventRepository(session)
    if jobs.transition(job_id, "cancelled", only_from=["queued"], finished_at=utcnow(),
                       stop_reason="cancelled"):
        events.append(job_id, "status", {
            "status": "cancelled", "terminal": True, "stop_reason": "cancelled",
            "progress": progress_dict(job.steps_completed, job.total_steps)})
    elif jobs.request_cancel(job_id):
        events.append(job_id, "status", {"status": "running", "terminal": False,
                                         "cancel_requested": True})
    else:
        status = jobs.status_of(job_id)
        raise ConflictError(f"job {job_id} is already {status}; only queued or running jobs "
                            "can be cancelled", slug="job-not-cancellable", status_now=status)
    session.flush()
    return jobs.refresh(job)


def delete_job(session: Session, job_id: str) -> None:
    """Delete a terminal job and its history; frees its Idempotency-Key."""
    job = get_job(session, job_id)
    if job.status not in TERMINAL or not JobRepository(session).delete(job_id):
        raise ConflictError(f"job {job_id} is {job.status}; cancel it first — only finished jobs "
                            "can be deleted", slug="job-not-finished", status_now=job.status)


def job_links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "gradients": f"{base}/gradients", "metrics": f"{base}/metrics",
            "diagnostics": f"{base}/diagnostics", "events": f"{base}/events",
            "cancel": f"{base}/cancel", "repair": f"{base}/repair",
            "comparison": f"{base}/comparison"}


def job_to_summary(job: Job) -> dict[str, Any]:
    nf = job.first_non_finite
    return {
        "id": job.id, "name": job.name, "status": job.status, "verdict": job.verdict,
        "stop_reason": job.stop_reason, "error": job.error,
        "cancel_requested": job.cancel_requested, "created_at": job.created_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
        "progress": progress_dict(job.steps_completed, job.total_steps),
        "latest": job.latest,
        "first_non_finite": {**nf, "description": describe_non_finite(nf)} if nf else None,
        "runtime_seconds": job.runtime_seconds, "parent_id": job.parent_id,
        "parent_sweep_id": job.parent_sweep_id,
        "attempts": job.attempts, "links": job_links(job.id),
    }


def job_to_read(job: Job) -> dict[str, Any]:
    return {**job_to_summary(job), "spec": job.spec, "repair": job.repair}


# --------------------------------------------------------------------------------------------
# Histories
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryQuery:
    start_step: int | None
    end_step: int | None
    max_points: int


def _resolve_range(history: HistoryRepository, job: Job, q: HistoryQuery
                   ) -> tuple[int, int, int] | None:
    """(first recorded step, last recorded step, recorded steps) inside the requested range."""
    if q.start_step is not None and q.end_step is not None and q.end_step < q.start_step:
        raise SpecValidationError(
            f"end_step ({q.end_step}) is before start_step ({q.start_step})", slug="invalid-range",
            errors=[{"loc": ["query", "end_step"], "msg": "must be >= start_step",
                     "type": "value_error"}])
    lo = q.start_step if q.start_step is not None else 0
    hi = q.end_step if q.end_step is not None else 2**31 - 1
    first, last = history.step_bounds(job.id, lo, hi)
    if first is None or last is None:
        return None
    if last - first + 1 <= 4 * q.max_points:  # small ranges: counting is cheap
        return first, last, history.count_steps(job.id, first, last)
    # large ranges: the recorded-step counts stored in the step-metric rollups
    rolled = _rolled(history, job, -1, MAX_LEVEL, last)
    runs, raw_ranges = cover(first, last, MAX_LEVEL, rolled)
    count = sum(history.count_steps(job.id, a, b) for a, b in raw_ranges)
    blocks = history.rollup_blocks(job.id, [-1], runs)
    if -1 in blocks:
        starts, blobs = blocks[-1]
        count += int(unpack_blocks(starts, blobs, len(STEP_METRICS), [0]).count.sum())
    return first, last, count


def _rolled(history: HistoryRepository, job: Job, layer: int, top_level: int, last: int
            ) -> dict[int, int]:
    if job.status in TERMINAL:  # every block of a finished job was closed by its worker
        return dict.fromkeys(range(MIN_LEVEL, top_level + 1), last)
    return history.rolled_until(job.id, layer, top_level)


def _series(steps: np.ndarray, values: np.ndarray, present: np.ndarray | None = None
            ) -> dict[str, Any]:
    vals: list[float | None] = values.tolist()
    if present is not None and not present.all():
        vals = [v if p else None for v, p in zip(vals, present.tolist(), strict=True)]
    return {"steps": steps.tolist(), "values": vals}


def _downsample_layers(
    history: HistoryRepository, job: Job, layers: list[int], first: int, last: int,
    max_points: int, all_metrics: tuple[str, ...], names: tuple[str, ...],
) -> tuple[dict[int, list[tuple[np.ndarray, np.ndarray]]], int]:
    """Downsample ``names`` of each of ``layers`` (-1: the step metrics) over [first, last].

    Whole aligned blocks come from the stored rollups (one row per layer and block), the
    ragged ends and any not-yet-rolled tail of a running job from the raw rows.
    """
    plan = plan_buckets(first, last, max_points)
    select = [all_metrics.index(m) for m in names]
    runs: list[tuple[int, int, int]] = []
    raw_ranges = [(first, last)]
    if plan.level is not None:
        rolled = _rolled(history, job, layers[0], plan.level, last)
        runs, raw_ranges = cover(first, last, plan.level, rolled)
    job_id = job.id
    blocks = history.rollup_blocks(job_id, layers, runs)
    out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for layer in layers:
        def raw(ranges: list[tuple[int, int]], layer: int = layer
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if layer < 0:
                return history.step_points(job_id, names, ranges)
            return history.layer_points(job_id, layer, names, ranges)

        parts: list[Summary] = []
        if layer in blocks:
            starts, blobs = blocks[layer]
            parts.append(unpack_blocks(starts, blobs, len(all_metrics), select))
        if raw_ranges:
            parts.append(Summary.from_points(*raw(raw_ranges)))
        units = in_step_order(parts) if parts else Summary.empty(len(names))
        edge_s, edge_v, edge_p = raw([(first, first), (last, last)])
        edges = [(edge_s[edge_p[:, j]], edge_v[edge_p[:, j], j]) for j in range(len(names))]
        out[layer] = downsample_points(units, plan.bucket_size, edges)
    return out, plan.bucket_size


def _sampling(downsampled: bool, bucket_size: int | None, q: HistoryQuery, count: int
              ) -> dict[str, Any]:
    return {"downsampled": downsampled, "method": "minmax-buckets" if downsampled else None,
            "bucket_size": bucket_size if downsampled else None, "max_points": q.max_points,
            "points_in_range": count}


def _check_metrics(metrics: list[str] | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not metrics:
        return allowed
    names: list[str] = []
    for item in metrics:
        names.extend(p.strip() for p in item.split(",") if p.strip())
    unknown = [m for m in names if m not in allowed]
    if unknown:
        raise SpecValidationError(
            f"unknown metric {unknown[0]!r}; choose from {', '.join(allowed)}",
            slug="unknown-metric",
            errors=[{"loc": ["query", "metrics"], "msg": f"unknown metric {m!r}",
                     "type": "enum"} for m in unknown])
    return tuple(dict.fromkeys(names))


def gradient_history(session: Session, job_id: str, q: HistoryQuery, *, layer: int | None,
                     metrics: list[str] | None) -> dict[str, Any]:
    """Per-layer series, downsampled to at most ``max_points`` points per series."""
    job = get_job(session, job_id)
    names = _check_metrics(metrics, LAYER_METRICS)
    history = HistoryRepository(session)
    resolved = _resolve_range(history, job, q)
    out: dict[str, Any] = {"job_id": job_id, "start_step": None, "end_step": None, "layers": [],
                           **_sampling(False, None, q, 0)}
    if resolved is None:
        return out
    first, last, count = resolved
    layers = list(range(len(job.spec["model"]["hidden"]) + 1))  # hidden layers, then output
    if layer is not None:
        if layer not in layers:
            raise NotFoundError(f"job {job_id} has layers {layers[0]}..{layers[-1]}; "
                                f"no layer {layer}", slug="layer-not-found")
        layers = [layer]
    downsample = count > q.max_points
    bucket_size: int | None = None
    if downsample:
        results, bucket_size = _downsample_layers(
            history, job, layers, first, last, q.max_points, LAYER_METRICS, names)
    for ly in layers:
        if not downsample:
            steps, values, present = history.layer_points(job_id, ly, names, [(first, last)])
            series = {m: _series(steps, values[:, j], present[:, j]) for j, m in enumerate(names)}
        else:
            series = {m: _series(*results[ly][j]) for j, m in enumerate(names)}
        out["layers"].append({"layer": ly, "series": series})
    out.update(start_step=first, end_step=last, **_sampling(downsample, bucket_size, q, count))
    return out


def metrics_history(session: Session, job_id: str, q: HistoryQuery, *,
                    metrics: list[str] | None) -> dict[str, Any]:
    """Network-level series (loss, pre/post-clip global norm, lr) and epoch figures."""
    job = get_job(session, job_id)
    names = _check_metrics(metrics, STEP_METRICS)
    history = HistoryRepository(session)
    epochs = history.epochs(job_id)
    out: dict[str, Any] = {
        "job_id": job_id, "start_step": None, "end_step": None, "series": {},
        "epochs": {
            "epoch": [e.epoch for e in epochs], "step": [e.step for e in epochs],
            "train_loss": [e.train_loss for e in epochs], "val_loss": [e.val_loss for e in epochs],
            "val_accuracy": [e.val_accuracy for e in epochs],
            "train_accuracy": [e.train_accuracy for e in epochs]},
        **_sampling(False, None, q, 0)}
    resolved = _resolve_range(history, job, q)
    if resolved is None:
        return out
    first, last, count = resolved
    downsample = count > q.max_points
    bucket_size: int | None = None
    if not downsample:
        steps, values, present = history.step_points(job_id, names, [(first, last)])
        out["series"] = {m: _series(steps, values[:, j], present[:, j])
                         for j, m in enumerate(names)}
    else:
        results, bucket_size = _downsample_layers(
            history, job, [-1], first, last, q.max_points, STEP_METRICS, names)
        out["series"] = {m: _series(*results[-1][j]) for j, m in enumerate(names)}
    out.update(start_step=first, end_step=last, **_sampling(downsample, bucket_size, q, count))
    return out


# --------------------------------------------------------------------------------------------
# Diagnostics, repair, comparison
# --------------------------------------------------------------------------------------------


@dataclass
class StoredHistory:
    """What core.diagnose needs, rebuilt from the database.

    ``alerts`` are the online monitor's findings (their JSON, from the job's ``alert``
    events): the monitor saw every step, the stored records may be thinned by
    ``record_every``, so an explosion shorter than that still reaches the diagnosis.
    """

    spec: TrainingSpec
    steps: list[Any]
    epochs: list[Any]
    stop_reason: str | None
    first_non_finite: Any
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _history_from_db(session: Session, job: Job, settings: Settings) -> StoredHistory:
    from core.telemetry import EpochRecord, LayerRecord, NonFiniteEvent, StepRecord

    history = HistoryRepository(session)
    alerts = [event.data for event in EventRepository(session).of_type(job.id, "alert")]
    nf = job.first_non_finite
    # A very long run is read thinned (bounded memory and time): every stride-th step plus
    # the last stored step, the first non-finite one and every step with a monitor alert.
    n_rows = history.step_count(job.id)
    stride = max(1, -(-n_rows // settings.diagnosis_max_records))
    also: list[int] = []
    if stride > 1:
        also = [a["step"] for a in alerts if isinstance(a.get("step"), int)]
        if nf:
            also.append(nf["step"])
        last = history.last_step(job.id)
        if last is not None:
            also.append(last)
    layers_by_step: dict[int, list[LayerRecord]] = {}
    for row in history.all_layers(job.id, stride=stride, also=also):
        layers_by_step.setdefault(row.step, []).append(LayerRecord(
            layer=row.layer, grad_norm=row.grad_norm, weight_grad_norm=row.weight_grad_norm,
            weight_norm=row.weight_norm, update_norm=row.update_norm, act_mean=row.act_mean,
            act_std=row.act_std, dead_fraction=row.dead_fraction,
            saturated_fraction=row.saturated_fraction))
    steps = [StepRecord(step=r.step, epoch=r.epoch, loss=r.loss, grad_norm=r.grad_norm,
                        clipped_grad_norm=r.clipped_grad_norm, lr=r.lr, clipped=r.clipped,
                        layers=layers_by_step.get(r.step, []))
             for r in history.all_steps(job.id, stride=stride, also=also)]
    epochs = [EpochRecord(epoch=e.epoch, step=e.step, train_loss=e.train_loss,
                          val_loss=e.val_loss, val_accuracy=e.val_accuracy,
                          train_accuracy=e.train_accuracy) for e in history.epochs(job.id)]
    first_nf = NonFiniteEvent(step=nf["step"], layer=nf["layer"], tensor=nf["tensor"],
                              value=nf["value"]) if nf else None
    spec = TrainingSpec.model_validate(job.spec, context={"limits": settings.spec_limits()})
    stop = job.stop_reason if job.status in TERMINAL else None
    if job.status in TERMINAL and stop is None:
        stop = "cancelled" if job.status == "cancelled" else "completed"
    return StoredHistory(spec, steps, epochs, stop, first_nf, alerts)


def diagnostics(session: Session, job_id: str, settings: Settings) -> dict[str, Any]:
    """The stored final report, or a provisional one built from the records so far."""
    job = get_job(session, job_id)
    stored = ReportRepository(session).get(job_id)
    if stored is not None:
        return stored.report
    from core.diagnostics import diagnose

    report = diagnose(_history_from_db(session, job, settings))
    data: dict[str, Any] = json.loads(report.model_dump_json())
    if job.status in TERMINAL:
        data["final"] = True
    return data


def repair_job(session: Session, job_id: str, settings: Settings, *,
               recommendation: int | None, spec_patch: dict[str, Any] | None,
               idempotency_key: str | None) -> Submitted:
    """A child job running the parent's spec with a recommendation's merge patch applied."""
    from core.diagnostics import apply_merge_patch

    parent = get_job(session, job_id)
    if spec_patch is not None and recommendation is not None:
        raise SpecValidationError("give either recommendation or spec_patch, not both",
                                  slug="validation-error")
    action: str | None = None
    if spec_patch is None:
        index = recommendation or 0
        report = diagnostics(session, job_id, settings)
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
    spec = validate_spec(patched, settings, loc_prefix=("patched_spec",))
    return submit_job(session, spec=spec, settings=settings, idempotency_key=idempotency_key,
                      parent_id=parent.id,
                      repair={"parent_id": parent.id, "recommendation": recommendation,
                              "action": action, "spec_patch": spec_patch})


def _figures(session: Session, job: Job, settings: Settings) -> dict[str, Any]:
    figures = HistoryRepository(session).figures(job.id)
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


def compare(session: Session, job_id: str, settings: Settings, *, other: str | None
            ) -> dict[str, Any]:
    """A job and its repair (or ``other``) side by side."""
    job = get_job(session, job_id)
    if other is not None:
        second = get_job(session, other)
        original, repair = (second, job) if job.parent_id == second.id else (job, second)
    elif job.parent_id is not None:
        original, repair = get_job(session, job.parent_id), job
    else:
        children = JobRepository(session).page(limit=1, parent_id=job.id)
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


