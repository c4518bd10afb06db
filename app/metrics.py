"""Prometheus metrics at ``/metrics`` (the ``prometheus-client`` library).

Two sources, so that any number of API processes and Celery workers need no multiprocess
files and no push gateway:

* the **database**, read at scrape time by :class:`DatabaseCollector`: jobs by status and
  verdict, queue depth and the oldest queued job's age (computed from the ``jobs`` table),
  and the counters workers push through it in the transactions that do the counted work
  (:mod:`app.counters`: steps trained, layer records stored, explosions detected, monitor
  stops, webhook delivery attempts by outcome, the workers' database-write latency). Every
  API process reports the same cluster-wide values.
* **this process**: the HTTP request latency histogram, by route template
  (``/v1/jobs/{job_id}``, never the raw path), and the requests refused by the
  failed-authentication throttle (:mod:`app.auth_throttle`) — scrape every API process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import counters
from app.auth_throttle import AuthThrottle
from app.models import Job, utcnow
from app.repositories import as_utc

__all__ = ["AuthThrottleCollector", "DatabaseCollector", "HttpMetricsMiddleware",
           "build_registry"]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
VERDICTS = ("healthy", "exploding", "vanishing", "unstable", "stalled")

# name in app.counters -> (metric name without _total, help, label name or None)
COUNTERS: dict[str, tuple[str, str, str | None]] = {
    counters.STEPS_TRAINED: ("gradwatch_steps_trained", "Optimizer steps stored by workers.",
                             None),
    counters.LAYER_VALUES_STORED: (
        "gradwatch_layer_records_stored",
        "Per-layer, per-step records (grad/weight/update norms, activation stats) stored.", None),
    counters.EXPLOSIONS_DETECTED: (
        "gradwatch_explosions_detected",
        "Explosions the online monitor confirmed (runaway growth or a non-finite value).", None),
    counters.MONITOR_STOPS: (
        "gradwatch_monitor_stops", "Jobs the monitor stopped early, by stop reason.", "reason"),
    counters.WEBHOOK_DELIVERY_ATTEMPTS: (
        "gradwatch_webhook_delivery_attempts",
        "Webhook delivery attempts by outcome: delivered, retrying (will be retried), "
        "gave_up (last attempt failed), refused (destination not allowed).", "outcome"),
}


class DatabaseCollector(Collector):
    """Cluster-wide figures read from the database at every scrape."""

    def __init__(self, factory: Callable[[], sessionmaker[Session] | None]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Metric]:
        factory = self._factory()
        if factory is None:  # the app has not started yet
            return
        with factory() as session:
            yield from self._jobs(session)
            yield from self._counters(counters.totals(session))

    def _jobs(self, session: Session) -> Iterator[Metric]:
        by_status = dict.fromkeys(STATUSES, 0)
        by_verdict: dict[tuple[str, str], int] = {}
        rows = session.execute(
            select(Job.status, Job.verdict, func.count()).group_by(Job.status, Job.verdict))
        for status, verdict, count in rows:
            by_status[status] = by_status.get(status, 0) + int(count)
            if verdict is not None:
                by_verdict[(status, verdict)] = int(count)
        jobs = GaugeMetricFamily("gradwatch_jobs", "Jobs by status.", labels=["status"])
        for status, count in by_status.items():
            jobs.add_metric([status], count)
        yield jobs
        verdicts = GaugeMetricFamily("gradwatch_jobs_by_verdict",
                                     "Diagnosed jobs by status and verdict.",
                                     labels=["status", "verdict"])
        for (status, verdict), count in sorted(by_verdict.items()):
            verdicts.add_metric([status, verdict], count)
        yield verdicts
        oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == "queued"))
        yield GaugeMetricFamily("gradwatch_queue_depth", "Jobs waiting for a worker.",
                                value=by_status["queued"])
        age = 0.0 if oldest is None else max(0.0, (utcnow() - as_utc(oldest)).total_seconds())
        yield GaugeMetricFamily("gradwatch_queue_oldest_age_seconds",
                                "How long the oldest queued job has waited (0: none waits).",
                                value=age)

    def _counters(self, totals: dict[tuple[str, str], float]) -> Iterator[Metric]:
        for key, (name, help_text, label) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=[label] if label else None)
            for (counter, labels), value in sorted(totals.items()):
                if counter != key:
                    continue
                if label:
                    family.add_metric([dict(_pairs(labels)).get(label, "")], value)
                else:
                    family.add_metric([], value)
            if not label and not family.samples:
                family.add_metric([], 0.0)
            yield family
        yield self._db_write_histogram(totals)

    @staticmethod
    def _db_write_histogram(totals: dict[tuple[str, str], float]) -> Metric:
        per_bucket = {dict(_pairs(labels)).get("le"): value for (name, labels), value
                      in totals.items() if name == counters.DB_WRITE_SECONDS_BUCKET}
        buckets: list[tuple[str, float]] = []
        running = 0.0
        for bound in [*map(repr, counters.DB_WRITE_BUCKETS), "+Inf"]:
            running += per_bucket.get(bound, 0.0)
            buckets.append((bound, running))
        family = HistogramMetricFamily(
            "gradwatch_db_write_seconds",
            "Latency of the workers' history flushes (one transaction each).")
        family.add_metric([], buckets,
                          sum_value=totals.get((counters.DB_WRITE_SECONDS_SUM, ""), 0.0))
        return family


class AuthThrottleCollector(Collector):
    """Requests this process refused for too many failed authentications, by scope."""

    def __init__(self, throttle: AuthThrottle) -> None:
        self._throttle = throttle

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "gradwatch_auth_throttled_requests",
            "Requests this API process answered 429 for too many failed authentications: "
            "scope `key` (one tenant key id), `address` (one client address).",
            labels=["scope"])
        for scope, count in sorted(self._throttle.throttled.items()):
            family.add_metric([scope], count)
        yield family


def _pairs(labels: str) -> Iterator[tuple[str, str]]:
    for pair in labels.split(","):
        if "=" in pair:
            key, _, value = pair.partition("=")
            yield key, value


class HttpMetricsMiddleware:
    """Times every HTTP request into ``histogram`` by method, route template and status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.histogram.labels(scope.get("method", ""), template, str(status)).observe(
                time.perf_counter() - started)


def build_registry(factory: Callable[[], sessionmaker[Session] | None],
                   throttle: AuthThrottle | None = None) -> tuple[CollectorRegistry, Histogram]:
    """A registry of its own per app (so several apps in one process never collide)."""
    registry = CollectorRegistry(auto_describe=True)
    histogram = Histogram(
        "gradwatch_http_request_duration_seconds",
        "HTTP request latency of this API process, by method, route template and status.",
        labelnames=["method", "route", "status"], registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
    registry.register(DatabaseCollector(factory))
    if throttle is not None:
        registry.register(AuthThrottleCollector(throttle))
    return registry, histogram
