"""Sweeps as a resource: create (every member a real job), read, cancel, delete, the map.

A sweep row keeps the base spec and the axes; ``sweep_members`` keeps each grid point's axis
values, its job and what the worker measured for it (first bad step, peak-to-baseline, final
loss, preflight's risk); the member jobs carry ``parent_sweep_id``. Status and progress are
derived from the member jobs, so nothing else has to move a sweep's state. Services never
commit: the request does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import quotas, sweep_notify
from app.artifacts import forget_models
from app.datasets import uploaded_lookup
from app.errors import ConflictError, NotFoundError, SpecValidationError
from app.lifecycle import TERMINAL, move_members, request_cancel_many
from app.models import Job, Sweep, SweepMemberRow, utcnow
from app.repositories import JobRepository, as_utc
from app.schemas import utc_text
from app.services import (
    cursor_position,
    encode_cursor,
    validate_spec,
)
from app.settings import Settings
from app.submission import IDEMPOTENCY_IN_FLIGHT, scoped_key, submit_members
from app.sweep_members import member_outcomes, member_rows, sweep_status
from app.tenancy import Principal
from core.spec import UploadedData
from core.stability import MemberOutcome, StabilityGrid, stability_grid
from core.sweep import SweepAxis, SweepError, SweepLimits, expand_sweep

__all__ = [
    "SweepCreate",
    "cancel_sweep",
    "create_sweep",
    "delete_sweep",
    "get_sweep",
    "list_sweeps",
    "stability",
    "submit_sweep",
    "sweep_summaries",
    "sweep_to_read",
]


class SweepCreate(BaseModel):
    """`POST /v1/sweeps` body: a base spec and the axes to sweep it over."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="Free-form label.")
    spec: dict[str, Any] = Field(description="The base TrainingSpec (as POSTed to /v1/jobs).")
    axes: list[SweepAxis] = Field(min_length=1, description="Axes; members are their grid.")


class _KeyTaken(Exception):
    """The sweep's Idempotency-Key is held by another row (a concurrent request's)."""


def submit_sweep(session: Session, *, body: SweepCreate, settings: Settings,
                 principal: Principal, idempotency_key: str | None = None,
                 limits: SweepLimits | None = None) -> tuple[Sweep, bool]:
    """:func:`create_sweep` with ``POST /v1/jobs``'s Idempotency-Key semantics
    (:func:`app.submission.submit_job`): keys are per tenant; the same key with the same
    request (name, spec, axes) answers the sweep it created (``created`` False) and creates
    no member; with a different request, 422; while the first request's members are not
    yet handed to the executor, or its insert has not committed, 409
    ``idempotency-in-flight``. The key is freed when the sweep is deleted."""
    key = scoped_key(idempotency_key, principal.tenant)
    if key is not None:
        existing = session.scalars(select(Sweep).where(Sweep.idempotency_key == key)).first()
        if existing is not None:
            return _replay_sweep(session, existing, body), False
    try:
        sweep, _ = create_sweep(session, body=body, settings=settings, principal=principal,
                                limits=limits, idempotency_key=key)
    except _KeyTaken:
        existing = session.scalars(select(Sweep).where(Sweep.idempotency_key == key)).first()
        if existing is None:
            raise ConflictError(
                "a request with this Idempotency-Key is still being processed; retry shortly",
                slug="idempotency-in-flight", headers={"Retry-After": "1"}) from None
        return _replay_sweep(session, existing, body), False
    return sweep, True


def _replay_sweep(session: Session, existing: Sweep, body: SweepCreate) -> Sweep:
    axes = [a.model_dump(exclude_none=True) for a in body.axes]
    if (existing.name, existing.spec, existing.axes) != (body.name, body.spec, axes):
        raise SpecValidationError(
            f"Idempotency-Key was already used for sweep {existing.id} with a different "
            "request; use a new key for a different request",
            slug="idempotency-key-reused", sweep_id=existing.id)
    if utcnow() - as_utc(existing.created_at) < IDEMPOTENCY_IN_FLIGHT and any(
            job is not None and job.status == "queued" and job.enqueued_at is None
            for _, job in member_rows(session, existing.id)):
        raise ConflictError(
            "the first request with this Idempotency-Key is still being processed; "
            "retry shortly", slug="idempotency-in-flight", headers={"Retry-After": "1"})
    return existing


def create_sweep(session: Session, *, body: SweepCreate, settings: Settings,
                 principal: Principal, limits: SweepLimits | None = None,
                 idempotency_key: str | None = None) -> tuple[Sweep, list[str]]:
    """Insert the sweep and one queued job per member, all owned by ``principal``'s tenant,
    and the sweep's own webhook when the base spec has ``notify`` (the members get none;
    :mod:`app.sweep_notify`); the caller commits, then enqueues. Every member counts against
    the queued-jobs quota (429 before anything is inserted). ``idempotency_key``: already scoped (see
    :func:`submit_sweep`); :class:`_KeyTaken` when another sweep holds it."""
    base = validate_spec(body.spec, settings, loc_prefix=("body", "spec"),
                         uploaded=uploaded_lookup(session, principal))
    sweep_notify.check_notify(base.notify, allow_private=settings.webhook_allow_private)
    # the sweep notifies once, as a whole (app.sweep_notify): its members do not
    spec = {k: v for k, v in body.spec.items() if k != "notify"}
    if isinstance(base.data, UploadedData):  # members carry the data set's shape, filled in
        spec = {**spec, "data": base.data.model_dump(mode="json")}
    try:
        members = expand_sweep(spec, body.axes, limits or SweepLimits(),
                               settings.spec_limits())
    except SweepError as exc:
        kind = "limit_exceeded" if exc.limit else "value_error"
        raise SpecValidationError(
            str(exc), slug="limit-exceeded" if exc.limit else "validation-error",
            errors=[{"loc": ["body", *exc.loc], "msg": str(exc), "type": kind}],
            limit=exc.limit) from None
    quotas.check_queued(session, principal.tenant, settings, len(members))
    sweep = Sweep(id=str(uuid.uuid4()), name=body.name, spec=body.spec,
                  axes=[a.model_dump(exclude_none=True) for a in body.axes],
                  member_count=len(members), created_at=utcnow(), tenant=principal.tenant,
                  idempotency_key=idempotency_key)
    try:
        with session.begin_nested():
            session.add(sweep)
    except IntegrityError:
        if idempotency_key is None:
            raise
        raise _KeyTaken from None
    if base.notify is not None:
        sweep_notify.subscribe(session, sweep, base.notify)
    jobs = submit_members(session, [m.spec for m in members], settings=settings,
                          tenant=sweep.tenant, sweep_id=sweep.id)
    session.add_all([SweepMemberRow(sweep_id=sweep.id, idx=m.index, job_id=job.id,
                                    axis_values=m.values)
                     for m, job in zip(members, jobs, strict=True)])
    session.flush()
    return sweep, [job.id for job in jobs]


def get_sweep(session: Session, sweep_id: str, principal: Principal) -> Sweep:
    """The sweep, if ``principal`` may see it; otherwise the 404 of a missing sweep. Every
    look-up of a sweep by id from a request goes through here."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or not principal.can_see(sweep.tenant):
        raise NotFoundError(f"sweep {sweep_id} does not exist (or was deleted)",
                            slug="sweep-not-found")
    return sweep


def sweep_to_read(session: Session, sweep: Sweep) -> dict[str, Any]:
    """The sweep resource: status and progress derived from the members, one entry each."""
    members = member_rows(session, sweep.id)
    statuses = [job.status if job is not None else "deleted" for _, job in members]
    done = sum(s in TERMINAL or s == "deleted" for s in statuses)
    steps = sum(job.steps_completed for _, job in members if job is not None)
    total = sum(job.total_steps for _, job in members if job is not None)
    base = f"/v1/sweeps/{sweep.id}"
    return {
        "id": sweep.id, "name": sweep.name, "created_at": utc_text(sweep.created_at),
        "tenant": sweep.tenant,
        "status": sweep_status([s for s in statuses if s != "deleted"]),
        "progress": {"members_done": done, "members": len(members), "step": steps,
                     "total_steps": total,
                     "fraction": round(steps / total, 6) if total else 0.0},
        "axes": sweep.axes, "spec": sweep.spec,
        "members": [{
            "index": row.idx, "job_id": row.job_id, "values": row.axis_values,
            "status": job.status if job is not None else "deleted",
            "verdict": job.verdict if job is not None else None,
            "stop_reason": job.stop_reason if job is not None else None,
            "first_bad_step": row.first_bad_step, "peak_to_baseline": row.peak_to_baseline,
            "final_loss": row.final_loss, "predicted_risk": row.predicted_risk,
        } for row, job in members],
        "links": {"self": base, "cancel": f"{base}/cancel", "events": f"{base}/events",
                  "stability": f"{base}/stability",
                  "stability_plot": f"{base}/plots/stability",
                  **({"webhook": f"/v1/webhooks/{sweep.id}"} if sweep.spec.get("notify")
                     else {})},
    }


def _derived_status() -> ColumnElement[str]:
    """:func:`_status` in SQL, correlated to ``sweeps``: the sweep's status from its member
    jobs (deleted members left out), for filtering a list before its LIMIT."""
    live = func.count(Job.id)

    def n(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    return (select(case(
        (and_(live > 0, n(Job.status == "queued") == live), "queued"),
        (n(Job.status.not_in(sorted(TERMINAL))) > 0, "running"),
        (n(Job.status == "failed") > 0, "failed"),
        (n(Job.status == "cancelled") > 0, "cancelled"),
        else_="succeeded"))
        .select_from(SweepMemberRow).outerjoin(Job, Job.id == SweepMemberRow.job_id)
        .where(SweepMemberRow.sweep_id == Sweep.id).correlate(Sweep).scalar_subquery())


def list_sweeps(session: Session, *, principal: Principal, limit: int, cursor: str | None,
                statuses: Sequence[str] = (), tenant: str | None = None
                ) -> tuple[list[Sweep], str | None]:
    """A page of the sweeps ``principal`` may see (the admin: all, or ``tenant``'s), newest
    first, paged as :func:`app.services.list_jobs` (the same opaque cursor); ``statuses``
    filters on the derived status (computed in the query, so pages stay full)."""
    after = cursor_position(session, cursor)
    query = select(Sweep)
    scope = principal.scope(tenant)
    if scope is not None:
        query = query.where(Sweep.tenant == scope)
    if statuses:
        query = query.where(_derived_status().in_(statuses))
    if after is not None:
        created, last_id = after
        query = query.where(or_(Sweep.created_at < created,
                                and_(Sweep.created_at == created, Sweep.id < last_id)))
    query = query.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)
    items = list(session.scalars(query))
    next_cursor = encode_cursor(items[limit - 1]) if len(items) > limit else None
    return items[:limit], next_cursor


def sweep_summaries(session: Session, sweeps: Sequence[Sweep]) -> list[dict[str, Any]]:
    """List items: each sweep without its members, its status and progress as
    :func:`sweep_to_read` derives them, and its members' verdict counts. One aggregate query
    over the member jobs of the whole page."""
    counts: dict[str, dict[str, Any]] = {
        s.id: {"members": 0, "done": 0, "step": 0, "total": 0, "statuses": set(),
               "verdicts": {}} for s in sweeps}
    if sweeps:
        rows = session.execute(
            select(SweepMemberRow.sweep_id, Job.status, Job.verdict,
                   func.count(SweepMemberRow.idx), func.coalesce(func.sum(Job.steps_completed), 0),
                   func.coalesce(func.sum(Job.total_steps), 0))
            .outerjoin(Job, Job.id == SweepMemberRow.job_id)
            .where(SweepMemberRow.sweep_id.in_(list(counts)))
            .group_by(SweepMemberRow.sweep_id, Job.status, Job.verdict)).all()
        for sweep_id, status, verdict, n, steps, total in rows:
            c = counts[sweep_id]
            c["members"] += n
            c["done"] += n if status is None or status in TERMINAL else 0
            c["step"] += int(steps)
            c["total"] += int(total)
            if status is not None:  # None: the member's job was deleted
                c["statuses"].add(status)
            if verdict is not None:
                c["verdicts"][verdict] = c["verdicts"].get(verdict, 0) + n
    out = []
    for sweep in sweeps:
        c = counts[sweep.id]
        out.append({
            "id": sweep.id, "name": sweep.name, "created_at": sweep.created_at,
            "tenant": sweep.tenant, "status": sweep_status(sorted(c["statuses"])),
            "progress": {"members_done": c["done"], "members": c["members"], "step": c["step"],
                         "total_steps": c["total"],
                         "fraction": round(c["step"] / c["total"], 6) if c["total"] else 0.0},
            "axes": sweep.axes, "member_count": sweep.member_count,
            "verdicts": dict(sorted(c["verdicts"].items())),
            "links": {"self": f"/v1/sweeps/{sweep.id}"},
        })
    return out


def cancel_sweep(session: Session, sweep_id: str, principal: Principal) -> None:
    """Cancel every unfinished member (queued now, running within one flush); 409 if none."""
    get_sweep(session, sweep_id, principal)
    sweep_notify.lock_sweep(session, sweep_id)  # before any member's row (app.sweep_notify)
    open_jobs = [job for _, job in member_rows(session, sweep_id)
                 if job is not None and job.status not in TERMINAL]
    if not open_jobs:
        raise ConflictError(f"sweep {sweep_id} has finished; only a sweep with queued or "
                            "running members can be cancelled", slug="sweep-not-cancellable")
    # queued members are cancelled now, running ones (or started since read) flagged; as
    # POST /v1/jobs/{id}/cancel does for one job, in a few statements for all of them
    cancelled = {job.id for job in move_members(
        session, sweep_id, [job.id for job in open_jobs if job.status == "queued"],
        "cancelled", expect=["queued"], finished_at=utcnow(), stop_reason="cancelled")}
    request_cancel_many(session, [job.id for job in open_jobs if job.id not in cancelled])


def delete_sweep(session: Session, sweep_id: str, principal: Principal) -> None:
    """Delete a finished sweep with its member jobs and their histories."""
    sweep = get_sweep(session, sweep_id, principal)
    members = member_rows(session, sweep_id)
    if any(job is not None and job.status not in TERMINAL for _, job in members):
        raise ConflictError(f"sweep {sweep_id} has unfinished members; cancel it first",
                            slug="sweep-not-finished")
    jobs = JobRepository(session)
    for _, job in members:
        if job is not None:
            jobs.delete(job.id, statuses=TERMINAL)
            forget_models(session, job.id)
    session.delete(sweep)
    session.flush()


def outcomes(session: Session, sweep_id: str) -> list[MemberOutcome]:
    """The finished members' outcomes (verdicts from their jobs)."""
    return member_outcomes(member_rows(session, sweep_id))


def stability(session: Session, sweep_id: str, x: str | None, y: str | None,
              at: dict[str, Any] | None = None, *, principal: Principal,
              at_loc: Callable[[str], list[str]] = lambda path: ["query", f"at.{path}"]
              ) -> StabilityGrid:
    """The grid over axes ``x`` (default: the last axis) and ``y`` (default: the first), the
    other axes held at ``at`` (default: their first values); a 422 for an ``at`` that holds
    nothing (``at_loc``: where the request gave ``at``'s path, for the error's ``loc``)."""
    sweep = get_sweep(session, sweep_id, principal)
    paths = [a["path"] for a in sweep.axes]
    if len(paths) < 2:
        raise SpecValidationError("a stability map needs a sweep over at least two axes",
                                  slug="validation-error")
    x = x or paths[-1]
    y = y or (paths[0] if paths[0] != x else paths[1])
    for name, value in (("x", x), ("y", y)):
        if value not in paths:
            raise SpecValidationError(
                f"{name}={value!r} is not an axis of this sweep; axes: {paths}",
                errors=[{"loc": ["query", name], "msg": f"not one of {paths}",
                         "type": "value_error"}])
    if x == y:
        raise SpecValidationError("x and y must be different axes",
                                  errors=[{"loc": ["query", "y"], "msg": "same as x",
                                           "type": "value_error"}])
    _check_held(sweep.axes, x, y, at or {}, at_loc)
    done = outcomes(session, sweep_id)
    if not done:
        raise ConflictError(f"no member of sweep {sweep_id} has finished yet",
                            slug="sweep-not-ready")
    return stability_grid(done, x, y, at)


def _check_held(axes: list[dict[str, Any]], x: str, y: str, at: dict[str, Any],
                loc: Callable[[str], list[str]]) -> None:
    """422 for an ``at`` that would be ignored: on no axis of the sweep, on an axis the map
    draws whole (``x``, ``y``), or at a value the axis does not have (an empty grid)."""
    values = {a["path"]: SweepAxis.model_validate(a).grid() for a in axes}
    for path, value in at.items():
        if path not in values:
            msg = f"at.{path}: not an axis of this sweep; axes: {list(values)}"
        elif path in (x, y):
            msg = (f"at.{path}: {path} is the map's {'x' if path == x else 'y'} axis, drawn "
                   "whole; hold only the other axes")
        elif value not in values[path]:
            msg = f"at.{path}={value!r} is not one of the axis's values: {values[path]}"
        else:
            continue
        raise SpecValidationError(msg, errors=[{"loc": loc(path), "msg": msg,
                                                "type": "value_error"}])

