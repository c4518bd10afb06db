"""The delivery loop: a daemon thread in every worker process that sends due webhooks.

Worker processes (the local executor's and Celery's pool children alike) each run one loop
(:func:`start_delivery_loop`); it never touches training (own thread, own short
transactions) and the API never waits for it. Every ``webhook_poll_seconds`` a loop claims
due deliveries with a conditional UPDATE (a lease: ``locked_until``), so any number of
loops on any number of machines share the table without sending a message twice at once.

Per attempt: the destination is resolved and checked again (a host name may point at a
private address by now), the request goes to the checked address (the URL's host is kept
for the Host header and TLS), redirects are not followed, the answer is read up to
``webhook_max_response_bytes`` within ``webhook_timeout_seconds``. A 2xx answer delivers;
anything else is retried with exponential backoff (+-20% jitter) up to
``webhook_max_attempts``; a refused destination fails at once. Deliveries of one job to one
subscription go out in order: a later event waits while an earlier one is pending.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from app import counters
from app.correlation import bind
from app.db import retry_on_locked, unit_of_work
from app.models import Webhook, WebhookDelivery, utcnow
from app.settings import Settings
from app.webhooks import DestinationRefused, resolve_destination, sign

__all__ = ["DeliveryLoop", "start_delivery_loop"]

log = logging.getLogger(__name__)

USER_AGENT = "gradwatch-webhooks/0.1"
BATCH = 20
EXCERPT_CHARS = 500


@dataclass(frozen=True)
class _Due:
    id: int
    message_id: str
    job_id: str | None
    attempts: int
    payload: str
    url: str
    secret: str


@dataclass(frozen=True)
class _Result:
    status_code: int | None
    error: str | None
    excerpt: str | None
    seconds: float
    retry: bool  # False: give up now (a refused destination)

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryLoop:
    """Claims due deliveries, sends them, records each attempt (see the module docstring)."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(
            follow_redirects=False, trust_env=False,  # never via a proxy from the environment
            timeout=httpx.Timeout(settings.webhook_timeout_seconds),
            headers={"User-Agent": USER_AGENT})

    def start(self) -> DeliveryLoop:
        self._thread = threading.Thread(target=self._run, name="gradwatch-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)
        self._client.close()

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except Exception:  # the database may be away for a while: try again next poll
                log.warning("webhook delivery pass failed", exc_info=True)
                sent = 0
            if sent == 0:
                self._wake.wait(self.settings.webhook_poll_seconds)
                self._wake.clear()

    # ---- one pass ----
    def run_once(self) -> int:
        """Send the deliveries due now (at most one batch); returns how many were attempted."""
        attempted = 0
        for due in self._due():
            if self._stop.is_set():
                break
            if not retry_on_locked(partial(self._claim, due.id)):
                continue
            result = self._send(due)
            retry_on_locked(partial(self._record, due, result))
            attempted += 1
        return attempted

    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.webhook_timeout_seconds * 2 + 30)

    def _due(self) -> list[_Due]:
        now = utcnow()
        earlier = aliased(WebhookDelivery)
        waits_for_earlier = exists().where(and_(
            earlier.webhook_id == WebhookDelivery.webhook_id,
            earlier.job_id == WebhookDelivery.job_id,
            earlier.id < WebhookDelivery.id, earlier.state == "pending"))
        with self.factory() as session:
            rows = session.execute(
                select(WebhookDelivery.id, WebhookDelivery.message_id, WebhookDelivery.job_id,
                       WebhookDelivery.attempts,
                       WebhookDelivery.payload, Webhook.url, Webhook.secret)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(WebhookDelivery.state == "pending",
                       WebhookDelivery.next_attempt_at <= now,
                       or_(WebhookDelivery.locked_until.is_(None),
                           WebhookDelivery.locked_until < now),
                       ~waits_for_earlier)
                .order_by(WebhookDelivery.id).limit(BATCH)).all()
        return [_Due(*row) for row in rows]

    def _claim(self, delivery_id: int) -> bool:
        now = utcnow()
        with unit_of_work(self.factory) as session:
            result = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == "pending",
                       or_(WebhookDelivery.locked_until.is_(None),
                           WebhookDelivery.locked_until < now))
                .values(locked_until=now + self._lease())
                .execution_options(synchronize_session=False))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _send(self, due: _Due) -> _Result:
        started = time.monotonic()
        s = self.settings
        try:
            host, address = resolve_destination(due.url, allow_private=s.webhook_allow_private)
        except DestinationRefused as exc:
            return _Result(None, f"destination refused: {exc}", None, 0.0, retry=False)
        except OSError as exc:
            return _Result(None, f"cannot resolve the destination: {exc}", None,
                           time.monotonic() - started, retry=True)
        body = due.payload.encode()
        timestamp = int(time.time())
        parts = urlsplit(due.url)
        literal = f"[{address}]" if ":" in address else address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers = {
            "Host": parts.netloc,  # host[:port]: credentials in URLs are refused "Content-Type": "application/json",
            "webhook-id": due.message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(due.secret, due.message_id, timestamp, body),
        }
        extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
        deadline = started + s.webhook_timeout_seconds
        try:
            request = self._client.build_request("POST", target, content=body, headers=headers,
                                                 extensions=extensions)
            response = self._client.send(request, stream=True)
            try:
                received = bytearray()
                for chunk in response.iter_bytes():
                    received += chunk
                    if len(received) >= s.webhook_max_response_bytes:
                        break
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the answer took longer than the timeout")
            finally:
                response.close()
        except httpx.HTTPError as exc:
            return _Result(None, f"{type(exc).__name__}: {exc}"[:EXCERPT_CHARS], None,
                           time.monotonic() - started, retry=True)
        excerpt = bytes(received[:EXCERPT_CHARS * 4]).decode("utf-8", "replace")[:EXCERPT_CHARS]
        error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        return _Result(response.status_code, error, excerpt, time.monotonic() - started,
                       retry=True)

    def _backoff(self, attempts: int) -> float:
        s = self.settings
        base = min(s.webhook_backoff_seconds * 2 ** (attempts - 1), s.webhook_backoff_max_seconds)
        return base * random.uniform(0.8, 1.2)

    def _record(self, due: _Due, result: _Result) -> None:
        now = utcnow()
        attempts = due.attempts + 1
        if result.delivered:
            state, outcome = "succeeded", "delivered"
        elif not result.retry:
            state, outcome = "failed", "refused"
        elif attempts >= self.settings.webhook_max_attempts:
            state, outcome = "failed", "gave_up"
        else:
            state, outcome = "pending", "retrying"
        next_at: datetime = now + timedelta(seconds=self._backoff(attempts))
        with unit_of_work(self.factory) as session:
            delivery = session.get(WebhookDelivery, due.id)
            if delivery is None:  # its subscription was deleted meanwhile
                return
            delivery.attempts = attempts
            delivery.state = state
            delivery.locked_until = None
            delivery.last_status_code = result.status_code
            delivery.last_error = result.error
            delivery.attempt_log = [*(delivery.attempt_log or []), {
                "attempt": attempts, "at": now.isoformat().replace("+00:00", "Z"),
                "status_code": result.status_code, "error": result.error,
                "duration_ms": round(result.seconds * 1000, 1), "response": result.excerpt}]
            if state == "pending":
                delivery.next_attempt_at = next_at
            else:
                delivery.finished_at = now
            counters.add(session, counters.WEBHOOK_DELIVERY_ATTEMPTS, labels={"outcome": outcome})
        level = logging.INFO if result.delivered else logging.WARNING
        with bind(job_id=due.job_id):
            log.log(level, "webhook %s (%s) attempt %d: %s", due.message_id,
                    urlsplit(due.url).netloc, attempts, result.error or f"HTTP {result.status_code}")


_LOOP: DeliveryLoop | None = None
_LOOP_LOCK = threading.Lock()


def start_delivery_loop(settings: Settings, factory: sessionmaker[Session]) -> DeliveryLoop:
    """This process's delivery loop (started on first call; a new one for new settings)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is not None and _LOOP.settings == settings:
            return _LOOP
        if _LOOP is not None:
            _LOOP.stop()
        _LOOP = DeliveryLoop(settings, factory).start()
        return _LOOP
