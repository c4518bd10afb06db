"""Queries on a job's stored history: its key, chunks, rollups and epoch figures.

The rows :mod:`app.history_store` encodes and decodes are written and read here, and nowhere
else; the bytes are opaque to these queries. Like every repository
(:mod:`app.repositories`, which re-exports :class:`HistoryRepository`), it never commits:
its callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlalchemy.orm import Session

from app.models import DiagnosticReportRow, EpochMetric, HistoryChunk, HistoryKey, HistoryRollup

__all__ = ["HistoryRepository"]


class HistoryRepository:
    """A job's history rows: its key, chunks, rollups and epoch figures (bytes are opaque
    here; :mod:`app.history_store` owns them)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # ---- keys ----
    def key_of(self, job_id: str) -> tuple[int, int] | None:
        """(history key, layers) of a job that has stored steps."""
        row = self.session.execute(select(HistoryKey.key, HistoryKey.n_layers)
                                   .where(HistoryKey.job_id == job_id)).first()
        return None if row is None else (int(row[0]), int(row[1]))

    def ensure_key(self, job_id: str, n_layers: int) -> int:
        """The job's history key, created on its first flush."""
        found = self.key_of(job_id)
        if found is not None:
            return found[0]
        key = self.session.scalar(insert(HistoryKey).values(job_id=job_id, n_layers=n_layers)
                                  .returning(HistoryKey.key))
        assert key is not None
        return int(key)

    # ---- writes ----
    def insert_chunk(self, key: int, first_step: int, last_step: int, n_steps: int,
                     data: bytes) -> None:
        self.session.connection().execute(insert(HistoryChunk), [{
            "job_key": key, "first_step": first_step, "last_step": last_step,
            "n_steps": n_steps, "data": data}])

    def insert_rollups(self, key: int, rows: Sequence[tuple[int, int, bytes]]) -> None:
        """Rows of (level, block, data)."""
        if rows:
            self.session.connection().execute(insert(HistoryRollup), [
                {"job_key": key, "level": level, "block": block, "data": data}
                for level, block, data in rows])

    def insert_epochs(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.session.connection().execute(insert(EpochMetric), rows)

    def delete_history(self, job_id: str) -> None:
        """Everything a run recorded (steps, epochs, rollups, report); not its events."""
        keys = select(HistoryKey.key).where(HistoryKey.job_id == job_id).scalar_subquery()
        for table in (HistoryChunk, HistoryRollup):
            self.session.execute(delete(table).where(table.job_key == keys)
                                 .execution_options(synchronize_session=False))
        for model in (HistoryKey, EpochMetric, DiagnosticReportRow):
            self.session.execute(delete(model).where(model.job_id == job_id)
                                 .execution_options(synchronize_session=False))

    # ---- reads ----
    def _from_chunk_holding(self, key: int, step: int) -> ColumnElement[bool]:
        """Chunks from the one holding ``step`` (or the first after it) on: an index seek."""
        holder = (select(func.max(HistoryChunk.first_step))
                  .where(HistoryChunk.job_key == key, HistoryChunk.first_step <= step)
                  .scalar_subquery())
        return HistoryChunk.first_step >= func.coalesce(holder, step)

    def chunks(self, key: int, lo: int, hi: int) -> list[tuple[int, int, int, bytes]]:
        """(first step, last step, steps, data) of the chunks overlapping steps [lo, hi]."""
        rows = self.session.execute(
            select(HistoryChunk.first_step, HistoryChunk.last_step, HistoryChunk.n_steps,
                   HistoryChunk.data)
            .where(HistoryChunk.job_key == key, self._from_chunk_holding(key, lo),
                   HistoryChunk.first_step <= hi, HistoryChunk.last_step >= lo)
            .order_by(HistoryChunk.first_step)).all()
        return [(int(a), int(b), int(n), bytes(d)) for a, b, n, d in rows]

    def chunk_spans(self, key: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(first step, last step, steps) of the chunks overlapping steps [lo, hi]."""
        rows = self.session.execute(
            select(HistoryChunk.first_step, HistoryChunk.last_step, HistoryChunk.n_steps)
            .where(HistoryChunk.job_key == key, self._from_chunk_holding(key, lo),
                   HistoryChunk.first_step <= hi, HistoryChunk.last_step >= lo)
            .order_by(HistoryChunk.first_step)).all()
        return [(int(a), int(b), int(n)) for a, b, n in rows]

    def chunk_totals(self, key: int, lo: int, hi: int) -> tuple[int | None, int | None, int]:
        """(first step, last step, steps) of the chunks lying wholly inside steps [lo, hi]."""
        row = self.session.execute(
            select(func.min(HistoryChunk.first_step), func.max(HistoryChunk.last_step),
                   func.coalesce(func.sum(HistoryChunk.n_steps), 0))
            .where(HistoryChunk.job_key == key, HistoryChunk.first_step >= lo,
                   HistoryChunk.last_step <= hi)).one()
        first, last, count = row
        return (None if first is None else int(first), None if last is None else int(last),
                int(count))

    def rolled_until(self, key: int) -> dict[int, int]:
        """Per stored level: the last block (not step) covered."""
        rows = self.session.execute(
            select(HistoryRollup.level, func.max(HistoryRollup.block))
            .where(HistoryRollup.job_key == key).group_by(HistoryRollup.level)).all()
        return {int(level): int(block) for level, block in rows}

    def rollups(self, key: int, runs: Sequence[tuple[int, int, int]]
                ) -> list[tuple[int, int, bytes]]:
        """(level, block, data) for ``runs`` of (level, first block, last block)."""
        out: list[tuple[int, int, bytes]] = []
        for level, lo, hi in runs:  # one index range scan per run
            out.extend((int(a), int(b), bytes(c)) for a, b, c in self.session.execute(
                select(HistoryRollup.level, HistoryRollup.block, HistoryRollup.data)
                .where(HistoryRollup.job_key == key, HistoryRollup.level == level,
                       HistoryRollup.block.between(lo, hi))
                .order_by(HistoryRollup.block)).all())
        return out

    def epochs(self, job_id: str) -> list[EpochMetric]:
        return list(self.session.scalars(
            select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)))
