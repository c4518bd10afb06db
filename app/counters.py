"""Monotonic counters pushed through the database, so that every process can add to them.

Workers (local or Celery, on any machine) add to a counter in the transaction that does the
counted thing (a flush adds the steps it stored); ``/metrics`` on any API process sums them
(:mod:`app.metrics`). Each process writes its own shard row, so workers never wait on each
other's row locks; deleting a job never makes a counter go down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.models import MetricCounter

__all__ = ["SHARDS", "add", "count_flush", "labels_text", "observe_db_write", "totals"]

SHARDS = 64

STEPS_TRAINED = "steps_trained"
LAYER_VALUES_STORED = "layer_values_stored"
EXPLOSIONS_DETECTED = "explosions_detected"
MONITOR_STOPS = "monitor_stops"
WEBHOOK_DELIVERY_ATTEMPTS = "webhook_delivery_attempts"
DB_WRITE_SECONDS_SUM = "db_write_seconds_sum"
DB_WRITE_SECONDS_COUNT = "db_write_seconds_count"
DB_WRITE_SECONDS_BUCKET = "db_write_seconds_bucket"

# upper bounds (seconds) of the database-write latency histogram; +Inf is implied
DB_WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def labels_text(labels: Mapping[str, str] | None) -> str:
    """``{"outcome": "ok"}`` -> ``outcome=ok`` (sorted; values must not hold ``,`` or ``=``)."""
    if not labels:
        return ""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _shard() -> int:
    return os.getpid() % SHARDS


def add(session: Session, name: str, amount: float = 1.0,
        labels: Mapping[str, str] | None = None) -> None:
    """Add ``amount`` to counter ``name`` in the caller's transaction."""
    if amount == 0:
        return
    key = {"name": name, "labels": labels_text(labels), "shard": _shard()}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = pg_insert(MetricCounter).values(**key, value=amount)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name", "labels", "shard"],
            set_={"value": MetricCounter.value + stmt.excluded.value})
        session.execute(stmt)
    elif dialect == "sqlite":
        lite = sqlite_insert(MetricCounter).values(**key, value=amount)
        lite = lite.on_conflict_do_update(
            index_elements=["name", "labels", "shard"],
            set_={"value": MetricCounter.value + lite.excluded.value})
        session.execute(lite)
    else:  # pragma: no cover - the two supported databases are above
        row = session.get(MetricCounter, (name, key["labels"], key["shard"]))
        if row is None:
            session.add(MetricCounter(**key, value=amount))
        else:
            row.value += amount


def observe_db_write(session: Session, seconds: float) -> None:
    """One database write of ``seconds`` into the write-latency histogram."""
    add(session, DB_WRITE_SECONDS_SUM, seconds)
    add(session, DB_WRITE_SECONDS_COUNT, 1)
    bound = next((b for b in DB_WRITE_BUCKETS if seconds <= b), None)
    add(session, DB_WRITE_SECONDS_BUCKET, 1, {"le": "+Inf" if bound is None else repr(bound)})


def totals(session: Session) -> dict[tuple[str, str], float]:
    """Every counter summed over its shards: ``{(name, labels): value}``."""
    rows = session.execute(
        select(MetricCounter.name, MetricCounter.labels, func.sum(MetricCounter.value))
        .group_by(MetricCounter.name, MetricCounter.labels))
    return {(name, labels): float(value or 0) for name, labels, value in rows}



def count_flush(session: Session, *, steps: int, layer_records: int, seconds: float) -> None:
    """A worker's history flush, in its own transaction: the steps and layer records it
    stores and how long writing them took (up to this call; the commit follows)."""
    add(session, STEPS_TRAINED, steps)
    add(session, LAYER_VALUES_STORED, layer_records)
    observe_db_write(session, seconds)
