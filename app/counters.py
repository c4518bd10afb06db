"""Monotonic counters pushed through the database, so that every process can add to them.

Workers (local or Celery, on any machine) add to a counter in the transaction that does the
counted thing (a flush adds the steps it stored); ``/metrics`` on any API process sums them
(:mod:`app.metrics`). Each process writes its own shard row, so workers never wait on each
other's row locks; deleting a job never makes a counter go down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.models import MetricCounter

__all__ = ["SHARDS", "add", "add_many", "count_flush", "labels_text", "observe_db_write", "totals"]

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


def _upsert(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE value = value + excluded.value``, built once per
    dialect with bound parameters (built afresh per call it would be compiled every time)."""
    if dialect not in _UPSERTS:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        table: Table = MetricCounter.__table__  # type: ignore[assignment]  # Core: no ORM bulk path
        stmt = insert(table).values(
            name=bindparam("name"), labels=bindparam("labels"), shard=bindparam("shard"),
            value=bindparam("value"))
        _UPSERTS[dialect] = stmt.on_conflict_do_update(
            index_elements=["name", "labels", "shard"],
            set_={"value": table.c.value + stmt.excluded.value})
    return _UPSERTS[dialect]


_UPSERTS: dict[str, Any] = {}


def add(session: Session, name: str, amount: float = 1.0,
        labels: Mapping[str, str] | None = None) -> None:
    """Add ``amount`` to counter ``name`` in the caller's transaction."""
    add_many(session, [(name, amount, labels)])


def add_many(session: Session,
             items: Sequence[tuple[str, float, Mapping[str, str] | None]]) -> None:
    """Add to several counters at once: ``(name, amount, labels)`` each (one statement)."""
    shard = _shard()
    params = [{"name": name, "labels": labels_text(labels), "shard": shard, "value": amount}
              for name, amount, labels in items if amount != 0]
    if not params:
        return
    # PostgreSQL and SQLite (the two supported databases) both have ON CONFLICT
    upsert = _upsert(session.get_bind().dialect.name)
    session.execute(upsert, params if len(params) > 1 else params[0])


def _db_write(seconds: float) -> list[tuple[str, float, Mapping[str, str] | None]]:
    bound = next((b for b in DB_WRITE_BUCKETS if seconds <= b), None)
    return [(DB_WRITE_SECONDS_SUM, seconds, None), (DB_WRITE_SECONDS_COUNT, 1, None),
            (DB_WRITE_SECONDS_BUCKET, 1, {"le": "+Inf" if bound is None else repr(bound)})]


def observe_db_write(session: Session, seconds: float) -> None:
    """One database write of ``seconds`` into the write-latency histogram."""
    add_many(session, _db_write(seconds))


def totals(session: Session) -> dict[tuple[str, str], float]:
    """Every counter summed over its shards: ``{(name, labels): value}``."""
    rows = session.execute(
        select(MetricCounter.name, MetricCounter.labels, func.sum(MetricCounter.value))
        .group_by(MetricCounter.name, MetricCounter.labels))
    return {(name, labels): float(value or 0) for name, labels, value in rows}



def count_flush(session: Session, *, steps: int, layer_records: int, seconds: float) -> None:
    """A worker's history flush, in its own transaction: the steps and layer records it
    stores and how long writing them took (up to this call; the commit follows)."""
    add_many(session, [(STEPS_TRAINED, steps, None), (LAYER_VALUES_STORED, layer_records, None),
                       *_db_write(seconds)])
