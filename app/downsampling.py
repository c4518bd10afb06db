"""Spike-preserving downsampling of step series.

Rules (DESIGN.md "Behaviour details"): the requested range is cut into buckets; each bucket
contributes its minimum and maximum points; if it holds NaN/+-Inf its first non-finite point
is kept (+-Inf win max/min naturally; a NaN takes the place of the minimum, or of the maximum
when the minimum is -Inf); the first and last points of the range are always included, and so
is the series' first non-finite point (it is its bucket's first non-finite point).

Everything works on :class:`app.summaries.Summary` arrays of shape ``(n_units, n_series)``,
where a unit is either one recorded point or an aligned block of ``2**level`` steps already
summarised by the worker (:class:`app.rollups.RollupBuilder`); summaries compose, so a bucket
made of blocks and points is summarised exactly as if it had been made of points. Here: how a
range is cut into buckets and covered with stored blocks, and which points each bucket keeps.
The summaries and the rollups are re-exported from here, where their users import them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.rollups import MAX_LEVEL, MIN_LEVEL, RollupBlocks, RollupBuilder
from app.summaries import Summary, group_starts, reduce_segments, summarize_blocks

__all__ = [
    "LAYER_METRICS",
    "MAX_LEVEL",
    "MIN_LEVEL",
    "STEP_METRICS",
    "BucketPlan",
    "RollupBlocks",
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

_BIG = np.iinfo(np.int64).max  # the step of a candidate that is no point: after every step


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
