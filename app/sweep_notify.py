"""Sweep events: one delivery per subscriber when a sweep's last member finishes — to the
sweep's own webhook (from its base spec's ``notify``) and to the ``POST /v1/webhooks``
subscriptions of its tenant (and the admin's) that ask for ``sweep.*``.

A sweep is something a service waits for as a whole, so a base spec's ``notify`` does not
give each member a webhook (up to 1,024 subscriptions whose secrets nobody ever saw): the
members' specs lose ``notify`` and the sweep gets one webhook (id = the sweep id, its secret
in the sweep's 202 once, deleted with the sweep). Its events are the sweep's final statuses,
``sweep.succeeded`` / ``sweep.failed`` / ``sweep.cancelled``, chosen by the job events the
``notify`` asks for (``job.succeeded`` -> ``sweep.succeeded``, ...; the ``diagnosis.*``
events are per run and have no sweep counterpart). A subscription made with
``POST /v1/webhooks`` may list ``sweep.*`` events too: it gets them for every sweep of its
tenant (the admin's: of every tenant), never another tenant's, with the same payload. The
deliveries go through the outbox of :mod:`app.webhooks`, so they are signed, retried and
listed exactly as a job's.

**Exactly once**, also when two workers finish the last two members at the same moment on
PostgreSQL, decided in the transaction that finishes a member (:func:`lock_for_finish` before
the member's terminal UPDATE, :func:`member_finished` after it):

* the sweep row is locked (``SELECT ... FOR NO KEY UPDATE``) before the member's job row is
  updated, and the unfinished members are counted after that update. Finishing transactions
  of one sweep run that part one after the other; under READ COMMITTED the count is a new
  statement, so it sees every member an earlier finisher committed. Whoever finishes last
  sees none unfinished and enqueues; nobody else can. A unique index alone would not do: two
  finishers counting at the same time each see the other's member still running (not yet
  committed) and *neither* would send;
* the lock comes *before* the job row's, as in every transaction that takes both: cancelling
  a sweep flags its running members and moves its queued ones, so it locks the sweep first
  (:func:`lock_sweep`); a worker finishing a member never holds its job row while waiting
  for the sweep, so the two cannot deadlock. ``NO KEY UPDATE`` rather than ``UPDATE``: rows that reference the sweep (its
  members, its webhook) can still be inserted and checked meanwhile;
* only sweeps someone listens to take the lock: the sweep has its own webhook, or a
  subscription that sees the sweep's tenant asks for a ``sweep.*`` event (one indexed
  look-up for a job outside a sweep). A subscription created while the last two members
  finish concurrently may miss that sweep (as a subscription created a moment later would);
  it never gets it twice;
* the unique index ``(webhook_id, sweep_id, event)`` on the deliveries backs it up;
* SQLite: writing transactions begin ``IMMEDIATE`` (:mod:`app.db`), so finishers are already
  serialised and the count sees every committed member; ``FOR UPDATE`` is not emitted there.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.errors import SpecValidationError
from app.jsonutil import encode_non_finite
from app.models import Job, Sweep, SweepMemberRow, Webhook, utcnow
from app.sweep_members import FINISHED, member_outcomes, member_rows, sweep_status
from app.webhooks import (
    DestinationRefused,
    WebhookRepository,
    check_destination,
    iso_utc,
    subscriptions_of,
)
from core.spec import NotifySpec
from core.stability import MemberOutcome, stability_grid

__all__ = ["FINISHED", "SWEEP_EVENTS", "check_notify", "listeners", "lock_for_finish",
           "lock_sweep", "member_finished", "subscribe", "sweep_events"]

SWEEP_EVENTS = tuple(f"sweep.{status}" for status in FINISHED)


def sweep_events(notify: NotifySpec) -> list[str]:
    """The sweep events a base spec's ``notify`` asks for: ``job.<status>`` -> ``sweep.<status>``."""
    return [f"sweep.{e.removeprefix('job.')}" for e in notify.events
            if e.startswith("job.") and f"sweep.{e.removeprefix('job.')}" in SWEEP_EVENTS]


def check_notify(notify: NotifySpec | None, *, allow_private: bool) -> None:
    """422 naming ``spec.notify.url`` (or ``.events``) when the sweep's webhook would be
    refused; call it before inserting anything."""
    if notify is None:
        return
    try:
        check_destination(notify.url, allow_private=allow_private)
    except DestinationRefused as exc:
        raise SpecValidationError(
            f"spec.notify.url: {exc}", slug="webhook-url-refused",
            errors=[{"loc": ["body", "spec", "notify", "url"], "msg": str(exc),
                     "type": "url_refused"}]) from None
    if not sweep_events(notify):
        msg = ("a sweep's notify sends sweep.succeeded / sweep.failed / sweep.cancelled, chosen "
               "by job.succeeded / job.failed / job.cancelled in notify.events; these events "
               "ask for none")
        raise SpecValidationError(
            f"spec.notify.events: {msg}",
            errors=[{"loc": ["body", "spec", "notify", "events"], "msg": msg,
                     "type": "value_error"}])


def subscribe(session: Session, sweep: Sweep, notify: NotifySpec) -> Webhook:
    """The sweep's own webhook (id = the sweep's id; checked by :func:`check_notify`)."""
    return WebhookRepository(session).create(url=notify.url, events=sweep_events(notify),
                                             tenant=sweep.tenant, sweep_id=sweep.id)


def listeners(session: Session, sweep_id: str, tenant: str | None) -> list[Webhook]:
    """Who wants some event of the sweep ``sweep_id`` (of ``tenant``): its own webhook and the
    subscriptions that see ``tenant`` and list a ``sweep.*`` event, oldest first."""
    hooks = session.scalars(
        select(Webhook).where(or_(Webhook.sweep_id == sweep_id, subscriptions_of(tenant)))
        .order_by(Webhook.created_at, Webhook.id))
    return [hook for hook in hooks if any(e in SWEEP_EVENTS for e in hook.events or [])]


def lock_for_finish(session: Session, job_id: str) -> str | None:
    """Before ``job_id`` moves to a terminal status: if it is a member of a sweep someone
    listens to, lock the sweep's row and return its id (see the module docstring); else
    None."""
    parent = session.execute(
        select(Sweep.id, Sweep.tenant).join(Job, Job.parent_sweep_id == Sweep.id)
        .where(Job.id == job_id)).first()
    if parent is None or not listeners(session, parent.id, parent.tenant):
        return None
    return parent.id if _lock(session, parent.id) else None


def lock_sweep(session: Session, sweep_id: str) -> bool:
    """Lock the sweep's row if someone listens to it: for a transaction that will write
    several of its members' rows (cancelling it), so that it takes the sweep before any of
    them, as a finishing member does (see the module docstring). True when it did: then a
    member that finishes in this transaction calls :func:`member_finished`."""
    tenant = session.execute(select(Sweep.tenant).where(Sweep.id == sweep_id)).first()
    if tenant is not None and listeners(session, sweep_id, tenant.tenant):
        return _lock(session, sweep_id)
    return False


def _lock(session: Session, sweep_id: str) -> bool:
    locked = session.scalar(select(Sweep.id).where(Sweep.id == sweep_id)
                            .with_for_update(key_share=True))  # FOR NO KEY UPDATE
    return locked is not None


def member_finished(session: Session, sweep_id: str) -> int:
    """A member of ``sweep_id`` (locked by :func:`lock_for_finish`) just reached a terminal
    status in this transaction: if it was the last, enqueue the sweep's event to every
    listener that wants it (:func:`listeners`). Returns how many deliveries were added."""
    unfinished = session.scalar(
        select(func.count()).select_from(SweepMemberRow)
        .join(Job, Job.id == SweepMemberRow.job_id)
        .where(SweepMemberRow.sweep_id == sweep_id, Job.status.not_in(FINISHED)))
    if unfinished:
        return 0
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        return 0
    hooks = WebhookRepository(session)
    data = encode_non_finite(_sweep_data(session, sweep))
    event = f"sweep.{data['status']}"
    return sum(hooks.enqueue_sweep(hook, sweep.id, event, data)
               for hook in listeners(session, sweep.id, sweep.tenant)
               if event in (hook.events or []))


def _sweep_data(session: Session, sweep: Sweep) -> dict[str, Any]:
    """The delivery's ``data``: the sweep as ``GET /v1/sweeps`` lists it (status, progress,
    verdict counts) with the setting to launch and the links."""
    rows = member_rows(session, sweep.id, fresh=True)
    jobs = [job for _, job in rows if job is not None]  # None: the member's job was deleted
    status = sweep_status([job.status for job in jobs])  # every one finished
    verdicts: dict[str, int] = {}
    for job in jobs:
        if job.verdict is not None:
            verdicts[job.verdict] = verdicts.get(job.verdict, 0) + 1
    steps = sum(job.steps_completed for job in jobs)
    total = sum(job.total_steps for job in jobs)
    finished = [job.finished_at for job in jobs if job.finished_at is not None]
    outcomes = member_outcomes(rows)
    base = f"/v1/sweeps/{sweep.id}"
    return {
        "sweep_id": sweep.id, "name": sweep.name, "status": status,
        "created_at": iso_utc(sweep.created_at),
        "finished_at": iso_utc(max(finished) if finished else utcnow()),
        "progress": {"members_done": len(rows), "members": len(rows), "step": steps,
                     "total_steps": total,
                     "fraction": round(steps / total, 6) if total else 0.0},
        "verdicts": dict(sorted(verdicts.items())),
        **_recommendation([a["path"] for a in sweep.axes], outcomes),
        "links": {"self": base, "stability": f"{base}/stability",
                  "stability_plot": f"{base}/plots/stability", "launch": f"{base}/launch"},
    }


def _recommendation(paths: list[str], outcomes: list[MemberOutcome]) -> dict[str, Any]:
    """``recommended`` (as ``GET /v1/sweeps/{id}/stability`` gives it over its default axes:
    x the last axis, y the first, the others at their first value), its ``recommended_reason``
    and ``stability_axes``; with one axis there is no map, so no recommendation."""
    if len(paths) < 2:
        return {"stability_axes": None, "recommended": None,
                "recommended_reason": "a stability map needs a sweep over at least two axes"}
    x, y = paths[-1], paths[0]
    if not outcomes:
        return {"stability_axes": {"x": x, "y": y}, "recommended": None,
                "recommended_reason": "no member finished with a diagnosis"}
    grid = stability_grid(outcomes, x, y)
    recommended = asdict(grid.recommended) if grid.recommended is not None else None
    return {"stability_axes": {"x": x, "y": y, "at": grid.fixed}, "recommended": recommended,
            "recommended_reason": grid.recommended_reason}
