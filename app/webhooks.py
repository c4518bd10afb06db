"""Webhooks: subscriptions, destination checks, Standard Webhooks signatures, and the outbox.

A subscription (``POST /v1/webhooks``, a job's ``notify`` in its spec, or a sweep's in its
base spec: :mod:`app.sweep_notify`) names a URL, the
events it wants and gets a secret (``whsec_<base64>``, shown once). When something happens
to a job, :func:`job_finished` / :func:`monitor_alert` insert one ``webhook_deliveries`` row
per matching subscription **in the transaction that made it happen** (a transactional
outbox: no event is lost when a process dies, none is sent for a change that rolled back);
when a sweep's last member finishes, :func:`app.sweep_notify.member_finished` does the same
for ``sweep.*``.
The delivery loops of the worker processes (:mod:`app.delivery`) send them.

Signatures follow Standard Webhooks (standardwebhooks.com): headers ``webhook-id`` (the
message id, the same on every retry), ``webhook-timestamp`` (Unix seconds of the attempt)
and ``webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``, the key
being the base64-decoded part of the secret after ``whsec_``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from app import counters
from app.models import DiagnosticReportRow, Job, JobEvent, Webhook, WebhookDelivery, utcnow
from app.repositories import id_batches

__all__ = [
    "EVENTS",
    "DestinationRefused",
    "WebhookRepository",
    "check_destination",
    "iso_utc",
    "job_finished",
    "jobs_finished",
    "monitor_alert",
    "new_secret",
    "resolve_destination",
    "sign",
    "subscriptions_of",
]

EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "diagnosis.exploding",
                    "diagnosis.final"]
EVENTS: tuple[str, ...] = ("job.succeeded", "job.failed", "job.cancelled",
                           "diagnosis.exploding", "diagnosis.final")
SECRET_PREFIX = "whsec_"

# The monitor findings that confirm an explosion (core.diagnostics.Monitor.explosion_confirmed).
CONFIRMING_ALERTS = frozenset({"gradient_explosion", "non_finite"})


# ---------------------------------------------------------------------------- signatures


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# ---------------------------------------------------------------------------- destinations


class DestinationRefused(ValueError):
    """A webhook URL gradwatch will not send to; the message says why."""


def _refused_address(address: str) -> str | None:
    """Why ``address`` is not a public destination (None when it is)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for test, what in ((ip.is_unspecified, "unspecified"), (ip.is_loopback, "loopback"),
                       (ip.is_link_local, "link-local"), (ip.is_multicast, "multicast"),
                       (ip.is_private, "private"), (ip.is_reserved, "reserved"),
                       (not ip.is_global, "non-public")):
        if test:
            return f"{address} is a {what} address"
    return None


def check_destination(url: str, *, allow_private: bool) -> str:
    """The URL, if it may be a webhook destination; raises :class:`DestinationRefused`.

    http(s) only, a host, no user name or password; a host given as an IP address (or
    ``localhost``) must be public unless ``allow_private``. Host names are resolved and
    checked again at every delivery (:func:`resolve_destination`): a name may point
    anywhere later.
    """
    if len(url) > 2000:
        raise DestinationRefused("the URL is longer than 2000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"the URL is not valid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise DestinationRefused("the URL must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("the URL must not contain a user name or password; "
                                 "verify deliveries with the signature instead")
    host = parts.hostname
    if not host:
        raise DestinationRefused("the URL has no host")
    if port == 0:
        raise DestinationRefused("the URL's port must not be 0")
    if not allow_private:
        name = host.rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            raise DestinationRefused(_private_hint(f"{host} is a loopback name"))
        try:
            reason = _refused_address(host)
        except ValueError:
            reason = None  # a host name: checked when resolved
        if reason:
            raise DestinationRefused(_private_hint(reason))
    return url


def _private_hint(reason: str) -> str:
    return (f"{reason}; webhooks go to public addresses only "
            "(GRADWATCH_WEBHOOK_ALLOW_PRIVATE=true allows private ones)")


def resolve_destination(url: str, *, allow_private: bool) -> tuple[str, str]:
    """``(host, address)``: the URL's host and the address to connect to, resolved now and
    checked (every resolved address must be public unless ``allow_private``)."""
    check_destination(url, allow_private=allow_private)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # an OSError here (the name does not resolve now) is worth retrying: it propagates
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    if not allow_private:
        for address in addresses:
            reason = _refused_address(address)
            if reason:
                raise DestinationRefused(_private_hint(f"{host} resolves to {reason}"))
    return host, addresses[0]


# ---------------------------------------------------------------------------- storage


def subscriptions_of(tenant: str | None) -> ColumnElement[bool]:
    """The ``POST /v1/webhooks`` subscriptions that see what ``tenant`` owns: the admin's and
    the tenant's own — never another tenant's."""
    return and_(Webhook.job_id.is_(None), Webhook.sweep_id.is_(None),
                Webhook.tenant.is_(None) if tenant is None
                else or_(Webhook.tenant.is_(None), Webhook.tenant == tenant))


class WebhookRepository:
    """Subscriptions and deliveries. Never commits: the caller owns the transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, *, url: str, events: Sequence[str], tenant: str | None,
               description: str | None = None, job_id: str | None = None,
               sweep_id: str | None = None) -> Webhook:
        # a job's (a sweep's) own webhook has the job's (sweep's) id: its link needs no look-up
        webhook = Webhook(id=job_id or sweep_id or str(uuid.uuid4()), url=url,
                          events=list(dict.fromkeys(events)), secret=new_secret(),
                          description=description, job_id=job_id, sweep_id=sweep_id,
                          tenant=tenant, created_at=utcnow())
        self.session.add(webhook)
        self.session.flush()
        return webhook

    def get(self, webhook_id: str) -> Webhook | None:
        return self.session.get(Webhook, webhook_id)

    def all(self, tenant: str | None = None) -> list[Webhook]:
        """Subscriptions to every job (``tenant``'s only, when given)."""
        query = select(Webhook).where(Webhook.job_id.is_(None), Webhook.sweep_id.is_(None))
        if tenant is not None:
            query = query.where(Webhook.tenant == tenant)
        return list(self.session.scalars(query.order_by(Webhook.created_at, Webhook.id)))

    def delete(self, webhook_id: str) -> bool:
        webhook = self.get(webhook_id)
        if webhook is None:
            return False
        self.session.delete(webhook)
        self.session.flush()
        return True

    def of_job(self, job_id: str) -> list[Webhook]:
        return list(self.session.scalars(select(Webhook).where(Webhook.job_id == job_id)))

    def subscribed(self, job_id: str, event: str, tenant: str | None) -> list[Webhook]:
        """Subscriptions that want ``event`` of ``job_id`` (a job of ``tenant``): the job's
        own, the admin's every-job ones, and the tenant's every-job ones — never another
        tenant's."""
        hooks = self.session.scalars(
            select(Webhook).where(or_(subscriptions_of(tenant), Webhook.job_id == job_id))
            .order_by(Webhook.created_at, Webhook.id))
        return [h for h in hooks if event in (h.events or [])]

    def deliveries(self, webhook_id: str, *, limit: int, before: int | None = None
                   ) -> list[WebhookDelivery]:
        """Newest first; ``before`` = the id of the last delivery of the previous page."""
        query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        if before is not None:
            query = query.where(WebhookDelivery.id < before)
        return list(self.session.scalars(
            query.order_by(WebhookDelivery.id.desc()).limit(limit)))

    def enqueue(self, webhook: Webhook, job_id: str, event: str, data: dict[str, Any]) -> bool:
        """Add a delivery of ``event`` (at most one per subscription, job and event)."""
        return self._add_once(webhook, event, data, job_id=job_id)

    def enqueue_sweep(self, webhook: Webhook, sweep_id: str, event: str,
                      data: dict[str, Any]) -> bool:
        """Add a delivery of the sweep event ``event`` (at most one per subscription, sweep
        and event: a unique index, too)."""
        return self._add_once(webhook, event, data, sweep_id=sweep_id)

    def _add_once(self, webhook: Webhook, event: str, data: dict[str, Any], *,
                  job_id: str | None = None, sweep_id: str | None = None) -> bool:
        """:meth:`_add` unless the subscription already has ``event`` for that job / sweep."""
        of = (WebhookDelivery.job_id == job_id if job_id is not None
              else WebhookDelivery.sweep_id == sweep_id)
        exists = self.session.scalar(select(WebhookDelivery.id).where(and_(
            WebhookDelivery.webhook_id == webhook.id, of, WebhookDelivery.event == event)))
        if exists is not None:
            return False
        self._add(webhook, event, data, job_id=job_id, sweep_id=sweep_id)
        return True

    def _add(self, webhook: Webhook, event: str, data: dict[str, Any], *,
             job_id: str | None = None, sweep_id: str | None = None) -> None:
        now = utcnow()
        payload = {"type": event, "timestamp": iso_utc(now), "data": data}
        self.session.add(WebhookDelivery(
            message_id=f"msg_{uuid.uuid4().hex}", webhook_id=webhook.id, event=event,
            job_id=job_id, sweep_id=sweep_id,
            payload=json.dumps(payload, separators=(",", ":"), allow_nan=False),
            state="pending", attempts=0, next_attempt_at=now, attempt_log=[], created_at=now))
        self.session.flush()


def iso_utc(value: datetime | None) -> str | None:
    """``value`` as ISO 8601 UTC with a ``Z`` (a naive value is taken as UTC); None as None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------- events


def _job_data(job: Job, diagnosis: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "job_id": job.id, "name": job.name, "status": job.status,
        "stop_reason": job.stop_reason, "verdict": job.verdict, "error": job.error,
        "request_id": job.request_id, "parent_id": job.parent_id,
        "created_at": iso_utc(job.created_at), "finished_at": iso_utc(job.finished_at),
        "progress": {"step": job.steps_completed, "total_steps": job.total_steps},
        "diagnosis": diagnosis, "links": {"self": f"/v1/jobs/{job.id}",
                                          "diagnostics": f"/v1/jobs/{job.id}/diagnostics"},
    }


def diagnosis_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The compact diagnosis a delivery carries: verdict, first bad step, layer, summary and
    the top recommendation with its ``spec_patch``."""
    findings = report.get("findings") or []
    first_bad = report.get("first_bad_step")
    deciding = next((f for f in findings if f.get("step") == first_bad and f.get("layers")),
                    next((f for f in findings if f.get("layers")), None))
    recommendations = report.get("recommendations") or []
    top = recommendations[0] if recommendations else None
    return {
        "verdict": report.get("verdict"), "final": report.get("final", True),
        "summary": report.get("summary"), "first_bad_step": first_bad,
        "layer": deciding["layers"][0] if deciding else None,
        "top_recommendation": None if top is None else {
            "action": top.get("action"), "rationale": top.get("rationale"),
            "spec_patch": top.get("spec_patch")},
    }


def _emit(session: Session, job: Job, event: str, diagnosis: dict[str, Any] | None) -> int:
    hooks = WebhookRepository(session)
    data = _job_data(job, diagnosis)
    return sum(hooks.enqueue(hook, job.id, event, data)
               for hook in hooks.subscribed(job.id, event, job.tenant))


def monitor_alert(session: Session, job_id: str, alert: dict[str, Any]) -> None:
    """A live monitor finding was stored: count a confirmed explosion and send
    ``diagnosis.exploding`` (once per job) to whoever wants it."""
    if alert.get("kind") not in CONFIRMING_ALERTS or alert.get("severity") != "critical":
        return
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return
    confirming = [e for e in session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "alert"))
        if e.get("kind") in CONFIRMING_ALERTS and e.get("severity") == "critical"]
    if len(confirming) <= 1:  # this alert (stored just before) is the job's first confirmation
        counters.add(session, counters.EXPLOSIONS_DETECTED)
    layers = alert.get("layers") or []
    _emit(session, job, "diagnosis.exploding", {
        "verdict": "exploding", "final": False, "summary": alert.get("message"),
        "first_bad_step": alert.get("step"), "layer": layers[0] if layers else None,
        "finding": alert.get("kind"), "top_recommendation": None})


def jobs_finished(session: Session, jobs: Sequence[Job]) -> None:
    """:func:`job_finished` for many jobs that just reached a terminal status: the same
    deliveries, but when no subscription could want any of them (no job hook of theirs, no
    every-job hook their tenants see) a single query says so."""
    if not jobs:
        return
    session.flush()
    ids = [job.id for job in jobs]
    every_job = or_(*(subscriptions_of(t) for t in {job.tenant for job in jobs}))
    wanted = any(session.scalar(select(Webhook.id).where(
        or_(every_job, Webhook.job_id.in_(batch))).limit(1)) for batch in id_batches(ids))
    for job in jobs:
        if wanted:
            job_finished(session, job.id)
        elif job.stop_reason in ("explosion", "non_finite"):
            counters.add(session, counters.MONITOR_STOPS, labels={"reason": job.stop_reason})


def job_finished(session: Session, job_id: str) -> None:
    """A job reached a terminal status (in the caller's transaction, after its diagnosis was
    stored): send ``diagnosis.exploding`` (if the monitor never did), ``diagnosis.final`` and
    ``job.<status>``, in that order, and count a monitor stop."""
    session.flush()
    job = session.get(Job, job_id, populate_existing=True)  # the status was set by an UPDATE
    if job is None or job.status not in ("succeeded", "failed", "cancelled"):
        return
    if job.stop_reason in ("explosion", "non_finite"):
        counters.add(session, counters.MONITOR_STOPS, labels={"reason": job.stop_reason})
    row = session.get(DiagnosticReportRow, job_id)
    summary = diagnosis_summary(row.report) if row is not None else None
    if summary is not None:
        if summary["verdict"] == "exploding":
            _emit(session, job, "diagnosis.exploding", summary)
        _emit(session, job, "diagnosis.final", summary)
    _emit(session, job, f"job.{job.status}", summary)
