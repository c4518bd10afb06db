"""Summaries of step series: per unit and series, the minimum, the maximum and the first
non-finite point, and the reductions that merge consecutive units into one.

A unit is either one recorded point or an aligned block of steps already summarised;
summaries compose, so merging a segment made of blocks and points gives exactly what merging
its points would. The downsampling rule (:mod:`app.downsampling`) and the worker's rollups
(:mod:`app.rollups`) are both built on these arrays of shape ``(n_units, n_series)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Summary",
    "group_starts",
    "reduce_segments",
    "summarize_blocks",
]

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
