"""Spike-preserving downsampling of step series, and the block rollups that make it fast.

Rules (DESIGN.md "Behaviour details"): the requested range is cut into buckets; each bucket
contributes its minimum and maximum points; if it holds NaN/+-Inf its first non-finite point
is kept (+-Inf win max/min naturally; a NaN takes the place of the minimum, or of the maximum
when the minimum is -Inf); the first and last points of the range are always included, and so
is the series' first non-finite point (it is its bucket's first non-finite point).

Everything works on :class:`Summary` arrays of shape ``(n_units, n_series)``, where a unit is
either one recorded point or an aligned block of ``2**level`` steps already summarised by the
worker (:class:`RollupBuilder`); summaries compose, so a bucket made of blocks and points is
summarised exactly as if it had been made of points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LAYER_METRICS",
    "MAX_LEVEL",
    "MIN_LEVEL",
    "STEP_METRICS",
    "BucketPlan",
    "RollupBuilder",
    "Summary",
    "cover",
    "downsample_points",
    "group_starts",
    "in_step_order",
    "plan_buckets",
    "reduce_segments",
    "select_points",
    "summarize_blocks",
]

LAYER_METRICS: tuple[str, ...] = (
    "grad_norm", "weight_grad_norm", "weight_norm", "update_norm",
    "act_mean", "act_std", "dead_fraction", "saturated_fraction",
)
STEP_METRICS: tuple[str, ...] = ("loss", "grad_norm", "clipped_grad_norm", "lr")

MIN_LEVEL = 4  # smallest rollup block: 16 steps
MAX_LEVEL = 16  # largest rollup block: 65,536 steps
_NONE = -1
_BIG = np.iinfo(np.int64).max


@dataclass
class Summary:
    """Per unit and series: min, max and first non-finite point (step -1: none) and count."""

    start: np.ndarray  # (n,) int64: first step covered by the unit (for grouping)
    count: np.ndarray  # (n, s) int64: recorded points
    min_step: np.ndarray  # (n, s) int64
    min_value: np.ndarray  # (n, s) float64
    max_step: np.ndarray
    max_value: np.ndarray
    nf_step: np.ndarray
    nf_value: np.ndarray

    @property
    def n_series(self) -> int:
        return int(self.count.shape[1])

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @classmethod
    def empty(cls, n_series: int) -> Summary:
        i = np.empty((0, n_series), dtype=np.int64)
        f = np.empty((0, n_series), dtype=np.float64)
        return cls(np.empty(0, dtype=np.int64), i, i, f, i.copy(), f.copy(), i.copy(), f.copy())

    @classmethod
    def from_points(cls, steps: np.ndarray, values: np.ndarray, present: np.ndarray) -> Summary:
        """Each recorded point as its own unit. ``present`` False marks a missing value."""
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        present = np.asarray(present, dtype=bool)
        step_col = np.broadcast_to(steps[:, None], values.shape)
        isnan = np.isnan(values)
        numeric = present & ~isnan
        nonfinite = present & ~np.isfinite(values)
        ms = np.where(numeric, step_col, _NONE)
        nfs = np.where(nonfinite, step_col, _NONE)
        return cls(
            start=steps.copy(),
            count=present.astype(np.int64),
            min_step=ms, min_value=np.where(numeric, values, np.nan),
            max_step=ms.copy(), max_value=np.where(numeric, values, np.nan),
            nf_step=nfs, nf_value=np.where(nonfinite, values, np.nan),
        )

    @staticmethod
    def concat(parts: Sequence[Summary]) -> Summary:
        nonempty = [p for p in parts if len(p)]
        if not nonempty:
            return parts[0]
        parts = nonempty
        if len(parts) == 1:
            return parts[0]
        return Summary(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def take(self, index: np.ndarray | slice) -> Summary:
        return Summary(*(getattr(self, f)[index] for f in _FIELDS))


_FIELDS = ("start", "count", "min_step", "min_value", "max_step", "max_value", "nf_step",
           "nf_value")


def _first_where(mask: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row index of the first True of each segment and column (-1 where none)."""
    rows = np.arange(mask.shape[0], dtype=np.int64)[:, None]
    first = np.minimum.reduceat(np.where(mask, rows, _BIG), starts, axis=0)
    return np.where(first == _BIG, -1, first)


def _pick(values: np.ndarray, index: np.ndarray, fill: float | int) -> np.ndarray:
    safe = np.maximum(index, 0)
    picked = np.take_along_axis(values, safe, axis=0)
    return np.where(index >= 0, picked, fill)


def reduce_segments(units: Summary, starts: np.ndarray) -> Summary:
    """Merge consecutive units: segment ``i`` is ``units[starts[i]:starts[i+1]]``.

    Units must be in step order; ties keep the earliest point (argmin/argmax semantics).
    """
    starts = np.asarray(starts, dtype=np.int64)
    n = len(units)
    lengths = np.diff(np.append(starts, n))
    single = lengths == 1
    if single.all():  # every unit is a segment of its own (a bucket is one stored block)
        return units
    if single.sum() * 4 > len(starts):  # mostly whole blocks: merge only the longer segments
        multi = ~single
        merged = _reduce(units.take(np.repeat(multi, lengths)),
                         np.concatenate(([0], np.cumsum(lengths[multi])[:-1])))
        alone = units.take(starts[single])
        out = []
        for f in _FIELDS:
            a, m = getattr(alone, f), getattr(merged, f)
            column = np.empty((len(starts), *a.shape[1:]), dtype=a.dtype)
            column[single], column[multi] = a, m
            out.append(column)
        return Summary(*out)
    return _reduce(units, starts)


def _reduce(units: Summary, starts: np.ndarray) -> Summary:
    n = len(units)
    k = n // len(starts) if len(starts) else 0
    if k and n % k == 0 and starts[0] == 0 and (np.diff(starts) == k).all():
        return _reduce_equal(units, k)
    seg_of_row = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    has_min = units.min_step >= 0
    with np.errstate(invalid="ignore"):
        lo = np.where(has_min, units.min_value, np.inf)
        hi = np.where(has_min, units.max_value, -np.inf)
        seg_lo = np.minimum.reduceat(lo, starts, axis=0)
        seg_hi = np.maximum.reduceat(hi, starts, axis=0)
        i_min = _first_where(has_min & (lo == seg_lo[seg_of_row]), starts)
        i_max = _first_where(has_min & (hi == seg_hi[seg_of_row]), starts)
    i_nf = _first_where(units.nf_step >= 0, starts)
    return Summary(
        start=units.start[starts],
        count=np.add.reduceat(units.count, starts, axis=0),
        min_step=_pick(units.min_step, i_min, _NONE),
        min_value=_pick(units.min_value, i_min, np.nan),
        max_step=_pick(units.max_step, i_max, _NONE),
        max_value=_pick(units.max_value, i_max, np.nan),
        nf_step=_pick(units.nf_step, i_nf, _NONE),
        nf_value=_pick(units.nf_value, i_nf, np.nan),
    )


def _first_true(mask: np.ndarray) -> np.ndarray:
    """Per segment and series (axis 1 of ``(n_seg, k, s)``), the first True's row, or -1."""
    first = np.argmax(mask, axis=1)
    return np.where(mask.any(axis=1), first, -1)


def _extreme(has: np.ndarray, key: np.ndarray, pick: str) -> np.ndarray:
    """Row of each segment's smallest (``pick`` "min") or largest key among ``has`` rows,
    the earliest on ties, -1 when none: argmin/argmax, corrected where an absent row (its key
    set to +-inf) tied with a present +-inf."""
    row = np.argmin(key, axis=1) if pick == "min" else np.argmax(key, axis=1)
    ok = np.take_along_axis(has, row[:, None, :], axis=1)[:, 0, :]
    row = np.where(ok, row, np.argmax(has, axis=1))
    return np.where(has.any(axis=1), row, -1)


def _reduce_equal(units: Summary, k: int) -> Summary:
    """:func:`reduce_segments` for segments of ``k`` units each (whole blocks of points or of
    smaller blocks, the common case): reductions along an axis instead of ``reduceat``."""
    n_seg, s = len(units) // k, units.n_series

    def shaped(a: np.ndarray) -> np.ndarray:
        return a.reshape(n_seg, k, s)

    has_min = shaped(units.min_step >= 0)
    with np.errstate(invalid="ignore"):
        i_min = _extreme(has_min, np.where(has_min, shaped(units.min_value), np.inf), "min")
        i_max = _extreme(has_min, np.where(has_min, shaped(units.max_value), -np.inf), "max")
    i_nf = _first_true(shaped(units.nf_step >= 0))

    def pick(a: np.ndarray, i: np.ndarray, fill: float | int) -> np.ndarray:
        got = np.take_along_axis(shaped(a), np.maximum(i, 0)[:, None, :], axis=1)[:, 0, :]
        return np.where(i >= 0, got, fill)

    return Summary(
        start=units.start[::k],
        count=shaped(units.count).sum(axis=1),
        min_step=pick(units.min_step, i_min, _NONE), min_value=pick(units.min_value, i_min, np.nan),
        max_step=pick(units.max_step, i_max, _NONE), max_value=pick(units.max_value, i_max, np.nan),
        nf_step=pick(units.nf_step, i_nf, _NONE), nf_value=pick(units.nf_value, i_nf, np.nan),
    )


def summarize_blocks(steps: np.ndarray, values: np.ndarray, present: np.ndarray, k: int
                     ) -> Summary:
    """``reduce_segments(Summary.from_points(steps, values, present), starts every k)`` for
    ``len(steps)`` a multiple of ``k``, computed from the points directly (the worker's whole
    blocks of consecutive steps): no per-point units are built."""
    m, s = len(steps) // k, values.shape[1]
    steps = np.asarray(steps, dtype=np.int64).reshape(m, k)
    v = np.asarray(values, dtype=np.float64).reshape(m, k, s)
    p = np.asarray(present, dtype=bool).reshape(m, k, s)
    numeric = p & ~np.isnan(v)
    i_min = _extreme(numeric, np.where(numeric, v, np.inf), "min")
    i_max = _extreme(numeric, np.where(numeric, v, -np.inf), "max")
    i_nf = _first_true(p & ~np.isfinite(v))

    def step_at(i: np.ndarray) -> np.ndarray:
        return np.where(i >= 0, np.take_along_axis(steps, np.maximum(i, 0), axis=1), _NONE)

    def value_at(i: np.ndarray) -> np.ndarray:
        got = np.take_along_axis(v, np.maximum(i, 0)[:, None, :], axis=1)[:, 0, :]
        return np.where(i >= 0, got, np.nan)

    return Summary(start=steps[:, 0].copy(), count=p.sum(axis=1, dtype=np.int64),
                   min_step=step_at(i_min), min_value=value_at(i_min),
                   max_step=step_at(i_max), max_value=value_at(i_max),
                   nf_step=step_at(i_nf), nf_value=value_at(i_nf))


def group_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in the sorted ``keys``."""
    if keys.size == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Rollups built by the worker
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketPlan:
    """How a range is cut: buckets of ``bucket_size`` steps aligned to multiples of it, built
    from rollup blocks of ``2**level`` steps (``level`` None: from raw points only)."""

    bucket_size: int
    level: int | None


def plan_buckets(start_step: int, end_step: int, max_points: int) -> BucketPlan:
    """Bucket size so that at most ``(max_points - 2) // 2`` aligned buckets cover the range.

    Buckets of 16 steps or more are powers of two (multiples of 65,536 beyond that), so each
    is exactly one stored rollup block, or a whole number of them.
    """
    n_buckets = max(2, (max_points - 2) // 2)
    span = end_step - start_step + 1
    # aligned buckets covering `span` steps number at most ceil(span / size) + 1
    size = max(1, -(-span // (n_buckets - 1)))
    level: int | None = None
    if size >= 1 << MIN_LEVEL:
        level = min(MAX_LEVEL, (size - 1).bit_length())
        block = 1 << level
        size = -(-size // block) * block
    return BucketPlan(bucket_size=size, level=level)


def cover(first: int, last: int, top_level: int, rolled_until: dict[int, int]
          ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Cover steps ``[first, last]`` with stored blocks, largest first, and raw step ranges.

    ``rolled_until[level]`` is the last step covered by that level's stored blocks. Returns
    (level, first block, last block) runs and inclusive raw step ranges; blocks are dyadic,
    so none straddles a bucket of ``2**top_level`` steps or a multiple of it.
    """
    runs: list[tuple[int, int, int]] = []
    raw: list[tuple[int, int]] = []
    p = first
    while p <= last:
        for level in range(top_level, MIN_LEVEL - 1, -1):
            size = 1 << level
            end = min(last, rolled_until.get(level, -1))
            if p % size == 0 and p + size - 1 <= end:
                n = (end - p + 1) // size if level == top_level else 1
                runs.append((level, p >> level, (p >> level) + n - 1))
                p += n * size
                break
        else:
            stop = min(last, (p // (1 << MIN_LEVEL) + 1) * (1 << MIN_LEVEL) - 1)
            if raw and raw[-1][1] == p - 1:
                raw[-1] = (raw[-1][0], stop)
            else:
                raw.append((p, stop))
            p = stop + 1
    return runs, raw


def in_step_order(parts: Sequence[Summary]) -> Summary:
    """Concatenate non-overlapping unit summaries and sort them by step."""
    units = Summary.concat(list(parts))
    if len(units) > 1 and np.any(np.diff(units.start) < 0):
        units = units.take(np.argsort(units.start, kind="stable"))
    return units


def _candidates(buckets: Summary) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each bucket's points for every series: (steps, values) planes of shape
    ``(n_buckets, n_series)`` for its extra non-finite point, its minimum and its maximum, in
    that order; a step of ``_BIG`` means the bucket contributes no such point."""
    lo_s, hi_s, nf_s = buckets.min_step, buckets.max_step, buckets.nf_step
    lo_v, hi_v = buckets.min_value, buckets.max_value
    extra = (nf_s >= 0) & (nf_s != lo_s) & (nf_s != hi_s)  # a NaN that min/max ignored
    numeric = lo_s >= 0
    drop_lo = extra & numeric & (lo_v != -np.inf)  # the NaN takes the minimum's place ...
    drop_hi = extra & numeric & ~drop_lo & (hi_v != np.inf)  # ... or the maximum's
    keep_lo = numeric & ~drop_lo
    # one point that is both minimum and maximum is shown once, also when the NaN took the
    # minimum's place (it then stays as the maximum: the bucket shows it and the NaN)
    keep_hi = numeric & ~drop_hi & ((hi_s != lo_s) | drop_lo)
    steps = [np.where(extra, nf_s, _BIG), np.where(keep_lo, lo_s, _BIG),
             np.where(keep_hi, hi_s, _BIG)]
    return steps, [buckets.nf_value, lo_v, hi_v]


def select_points(buckets: Summary, series: int) -> tuple[np.ndarray, np.ndarray]:
    """The points the buckets contribute for series ``series`` (steps, values), unsorted."""
    steps, values = _candidates(buckets)
    col_s = [p[:, series] for p in steps]
    col_v = [p[:, series] for p in values]
    keep = [c != _BIG for c in col_s]
    return (np.concatenate([c[k] for c, k in zip(col_s, keep, strict=True)]),
            np.concatenate([v[k] for v, k in zip(col_v, keep, strict=True)]))


def _sorted_in_bucket(steps: list[np.ndarray], values: list[np.ndarray]) -> None:
    """Sort each bucket's candidates (three ``(n_buckets, n_series)`` planes) by step, in
    place: a three-comparator sorting network, so no per-series sort is needed."""
    for a, b in ((0, 1), (1, 2), (0, 1)):
        swap = steps[a] > steps[b]
        steps[a], steps[b] = np.where(swap, steps[b], steps[a]), np.where(swap, steps[a], steps[b])
        values[a], values[b] = (np.where(swap, values[b], values[a]),
                                np.where(swap, values[a], values[b]))


def downsample_points(
    units: Summary, bucket_size: int, edges: list[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut ``units`` (in step order) into aligned buckets and pick each series' points.

    ``edges[s]`` = (steps, values) that must be kept for series ``s`` (first and last point
    of the range). Returns per series (steps, values), sorted by step, without duplicates.

    All series at once: each bucket's (at most three) points are sorted within the bucket,
    buckets are disjoint and in step order, so the bucket-major flattening is in step order.
    """
    n_series = units.n_series
    if not len(units):
        return [_merged_edges(np.empty(0, np.int64), np.empty(0), *edge) for edge in edges]
    buckets = reduce_segments(units, group_starts(units.start // bucket_size))
    steps, values = _candidates(buckets)
    _sorted_in_bucket(steps, values)
    lo_step, hi_step = int(units.start[0]), int(buckets.start[-1])
    first_s = np.full(n_series, _BIG)
    first_v = np.full(n_series, np.nan)
    last_s, last_v = first_s.copy(), first_v.copy()
    generic: list[int] = []  # series whose edges are not the range's first and last points
    for s, (e_s, e_v) in enumerate(edges):
        for step, value in zip(np.asarray(e_s).tolist(), np.asarray(e_v).tolist(), strict=True):
            if step <= lo_step:
                first_s[s], first_v[s] = step, value
            elif step >= hi_step:
                last_s[s], last_v[s] = step, value
            else:
                generic.append(s)
    n_b = len(buckets)
    # the edges as a fifth candidate before bucket 0's and after the last bucket's points
    before_s = np.full((n_b, n_series), _BIG)
    after_s = before_s.copy()
    before_s[0], after_s[-1] = first_s, last_s
    before_v = np.full((n_b, n_series), np.nan)
    after_v = before_v.copy()
    before_v[0], after_v[-1] = first_v, last_v
    for plane in steps:  # a point that is also an edge is kept once
        plane[0][plane[0] == first_s] = _BIG
        plane[-1][plane[-1] == last_s] = _BIG
    cand_s = np.stack([before_s, *steps, after_s], axis=1).reshape(-1, n_series).T
    cand_v = np.stack([before_v, *values, after_v], axis=1).reshape(-1, n_series).T
    valid = cand_s != _BIG
    result = [(cand_s[s][valid[s]], cand_v[s][valid[s]]) for s in range(n_series)]
    for s in set(generic):
        result[s] = _merged_edges(*result[s], *edges[s])
    return result


def _merged_edges(steps: np.ndarray, values: np.ndarray, edge_steps: np.ndarray,
                  edge_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted points with the edge points added (each step once)."""
    all_s = np.concatenate((np.asarray(edge_steps, dtype=np.int64), steps))
    all_v = np.concatenate((np.asarray(edge_values, dtype=np.float64), values))
    uniq, first = np.unique(all_s, return_index=True)
    return uniq, all_v[first]
