"""The block rollups the worker builds as it records, which make a downsampled read fast.

Aligned blocks of ``2**level`` steps, from ``2**MIN_LEVEL`` (16) to ``2**MAX_LEVEL`` (65,536),
are summarised (:class:`app.summaries.Summary`) once complete and stored beside the chunks
(:mod:`app.history_store`); a read covers whole buckets with them (:mod:`app.downsampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.summaries import Summary, group_starts, reduce_segments, summarize_blocks

__all__ = [
    "MAX_LEVEL",
    "MIN_LEVEL",
    "RollupBlocks",
    "RollupBuilder",
]

MIN_LEVEL = 4  # smallest rollup block: 16 steps
MAX_LEVEL = 16  # largest rollup block: 65,536 steps


@dataclass
class RollupBlocks:
    """Completed blocks of one level: ``block`` ids and their summaries."""

    level: int
    block: np.ndarray
    summary: Summary


class RollupBuilder:
    """Incrementally summarises aligned blocks of ``2**min_level`` (16), ... 65,536 steps.

    Feed points in step order with :meth:`add`; it returns the blocks that became complete
    (a block is complete once a later step has been seen). :meth:`finish` closes the rest.
    """

    def __init__(self, n_series: int, min_level: int = MIN_LEVEL) -> None:
        self.n_series = n_series
        self.min_level = min_level  # the smallest block built
        self._pending: dict[int, tuple[np.ndarray, Summary]] = {}  # level -> (child ids, units)
        # points of the open smallest block(s), as given (summarised once their block closes)
        self._raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._last_step = -1

    def add(self, steps: np.ndarray, values: np.ndarray, present: np.ndarray) -> list[RollupBlocks]:
        if len(steps) == 0:
            return []
        self._raw.append((np.asarray(steps, dtype=np.int64), values, present))
        self._last_step = int(steps[-1])
        return self._roll(final=False)

    def _closed_points(self, final: bool) -> Summary:
        """The points of every smallest block that is complete (all when ``final``),
        summarised per block; the rest stay raw."""
        if not self._raw:
            return Summary.empty(self.n_series)
        parts = self._raw
        steps, values, present = ((parts[0][k] if len(parts) == 1 else
                                   np.concatenate([p[k] for p in parts])) for k in range(3))
        n_done = len(steps) if final else int(
            np.searchsorted(steps >> self.min_level, (self._last_step + 1) >> self.min_level))
        self._raw = [(steps[n_done:], values[n_done:], present[n_done:])] if n_done < len(
            steps) else []
        steps, values, present = steps[:n_done], values[:n_done], present[:n_done]
        k = 1 << self.min_level
        if n_done and n_done % k == 0 and steps[0] % k == 0 and steps[-1] - steps[0] == n_done - 1:
            return summarize_blocks(steps, values, present, k)  # every step of whole blocks
        units = Summary.from_points(steps, values, present)
        return reduce_segments(units, group_starts(units.start >> self.min_level))

    def finish(self) -> list[RollupBlocks]:
        return self._roll(final=True)

    def _roll(self, *, final: bool) -> list[RollupBlocks]:
        out: list[RollupBlocks] = []
        known = self._last_step + 1  # every step < known has been seen
        no_ids = np.empty(0, dtype=np.int64)
        carry, carry_ids = Summary.empty(self.n_series), no_ids
        for level in range(self.min_level, MAX_LEVEL + 1):
            if level == self.min_level:  # the closed blocks of points, summarised
                done = self._closed_points(final)
                if len(done):
                    ids = done.start >> level
                    done.start = ids << level
                    out.append(RollupBlocks(level, ids, done))
                carry, carry_ids = done, done.start >> level
                continue
            prev_ids, prev = self._pending.get(level, (no_ids, Summary.empty(self.n_series)))
            units = Summary.concat([prev, carry])
            ids = np.concatenate([prev_ids, carry_ids >> 1])
            # ids are sorted, so the complete blocks are a prefix
            n_done = len(ids) if final else int(np.searchsorted(ids, known >> level))
            self._pending[level] = (ids[n_done:], units.take(slice(n_done, None)))
            carry, carry_ids = Summary.empty(self.n_series), no_ids
            if n_done:
                done_ids = ids[:n_done]
                starts = group_starts(done_ids)
                merged = reduce_segments(units.take(slice(0, n_done)), starts)
                block_ids = done_ids[starts]
                merged.start = block_ids << level
                out.append(RollupBlocks(level, block_ids, merged))
                carry, carry_ids = merged, block_ids
        return out
