"""One request's view of a job's stored history: its chunks fetched once and decoded once.

The history is stored in the compact columnar format of :mod:`app.history_store` (which alone
knows its bytes) and queried through :class:`app.repositories.HistoryRepository`; here are the
reads a response is made of: raw points in step ranges, counts and bounds of the recorded
steps, how far the rollups reach and their summaries, and every chunk in step order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy.orm import Session

from app.history_store import STORED_MIN_LEVEL, ChunkData, decode_chunk, decode_rollups
from app.lifecycle import TERMINAL
from app.models import Job
from app.repositories import HistoryRepository
from app.summaries import Summary

__all__ = ["HistoryView"]


class HistoryView:
    """One request's view of a job's stored history: raw points from its chunks (each chunk
    fetched once), counts, bounds and rollup summaries."""

    def __init__(self, repo: HistoryRepository, key: int, n_layers: int) -> None:
        self.repo, self.key, self.n_layers = repo, key, n_layers
        self._chunks: dict[int, tuple[int, bytes]] = {}  # first step -> (last step, data)
        self._decoded: dict[tuple[int, tuple[int, ...] | None], ChunkData] = {}

    @classmethod
    def of(cls, session: Session, job_id: str) -> HistoryView | None:
        repo = HistoryRepository(session)
        found = repo.key_of(job_id)
        return None if found is None else cls(repo, *found)

    def _fetch(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """(first step, data) of the chunks overlapping [lo, hi]; a range inside a chunk
        already fetched by this request costs no query."""
        for first, (last, data) in self._chunks.items():
            if first <= lo and hi <= last:
                return [(first, data)]
        rows = self.repo.chunks(self.key, lo, hi)
        for first, last, _, data in rows:
            self._chunks[first] = (last, data)
        return [(first, data) for first, _, _, data in rows]

    def _decode(self, first: int, data: bytes, series: Sequence[int] | None) -> ChunkData:
        """A chunk's ``series``, decoded once per request."""
        key = (first, None if series is None else tuple(series))
        found = self._decoded.get(key)
        if found is None:
            found = self._decoded[key] = decode_chunk(data, series)
        return found

    def points(self, series: Sequence[int], ranges: Sequence[tuple[int, int]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw points of ``series`` in the inclusive step ranges: steps, values, present."""
        steps, values, present = [], [], []
        for lo, hi in ranges:
            if lo > hi:
                continue
            for first, data in self._fetch(lo, hi):
                d = self._decode(first, data, series)
                if lo <= d.steps[0] and d.steps[-1] <= hi:
                    steps.append(d.steps)
                    values.append(d.values)
                    present.append(d.present)
                    continue
                a, b = np.searchsorted(d.steps, [lo, hi + 1])
                steps.append(d.steps[a:b])
                values.append(d.values[a:b])
                present.append(d.present[a:b])
        if not steps:
            k = len(series)
            return np.empty(0, np.int64), np.empty((0, k)), np.empty((0, k), dtype=bool)
        if len(steps) == 1:
            return steps[0], values[0], present[0]
        return np.concatenate(steps), np.concatenate(values), np.concatenate(present)

    def nth_step(self, lo: int, hi: int, k: int) -> int | None:
        """The ``k``-th recorded step (from 1) within [lo, hi]; None when there are fewer.
        Whole chunks are skipped by their count; only the chunk holding it is decoded."""
        seen = 0
        for first, last, n in self.repo.chunk_spans(self.key, lo, hi):
            inside = lo <= first and last <= hi
            if inside and seen + n < k:
                seen += n
                continue
            steps = self.points([], [(max(lo, first), min(hi, last))])[0]
            if seen + len(steps) >= k:
                return int(steps[k - seen - 1])
            seen += len(steps)
        return None

    def extent(self, lo: int, hi: int) -> tuple[int, int, int] | None:
        """(first recorded step, last recorded step, recorded steps) within [lo, hi]: the
        chunks inside the range by their stored spans (one query), the (at most two) chunks
        that straddle its ends from their decoded steps."""
        first, last, count = self.repo.chunk_totals(self.key, lo, hi)
        seen: set[int] = set()
        for edge in {lo, hi} - {0, 2**31 - 1}:  # no chunk straddles step 0 or the last
            for chunk_first, data in self._fetch(edge, edge):
                chunk_last = self._chunks[chunk_first][0]
                if (lo <= chunk_first and chunk_last <= hi) or chunk_first in seen:
                    continue  # inside the range (counted by its span), or counted already
                seen.add(chunk_first)
                steps = self._decode(chunk_first, data, []).steps
                steps = steps[(steps >= lo) & (steps <= hi)]
                if steps.size:
                    count += int(steps.size)
                    first = int(steps[0]) if first is None else min(first, int(steps[0]))
                    last = int(steps[-1]) if last is None else max(last, int(steps[-1]))
        if first is None or last is None:
            return None
        return first, last, count

    def last_step(self) -> int | None:
        found = self.extent(0, 2**31 - 1)
        return None if found is None else found[1]

    def n_steps(self) -> int:
        return sum(n for _, _, n in self.repo.chunk_spans(self.key, 0, 2**31 - 1))

    def rolled(self, job: Job, top_level: int, last: int) -> dict[int, int]:
        """Per stored level up to ``top_level``: the last step its blocks cover."""
        levels = range(STORED_MIN_LEVEL, top_level + 1)
        if job.status in TERMINAL:  # every block of a finished job was closed by its worker
            return dict.fromkeys(levels, last)
        blocks = self.repo.rolled_until(self.key)
        return {lv: ((blocks[lv] + 1) << lv) - 1 for lv in levels if lv in blocks}

    def summaries(self, runs: Sequence[tuple[int, int, int]], series: Sequence[int]) -> Summary:
        return decode_rollups(self.n_layers, self.repo.rollups(self.key, runs), series)

    def all_points(self, series: Sequence[int] | None, window: int = 256
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, ChunkData]]:
        """Every chunk in step order, decoded (``series`` only), a window of chunks at a time."""
        spans = self.repo.chunk_spans(self.key, 0, 2**31 - 1)
        for i in range(0, len(spans), window):
            group = spans[i:i + window]
            for _, _, _, data in self.repo.chunks(self.key, group[0][0], group[-1][1]):
                d = decode_chunk(data, series)
                yield d.steps, d.values, d.present, d
