"""Medians of the finite values, as :func:`numpy.median` computes them, without its per-call cost.

Every detector reads "the median of the finite values" of some slice of a series, often of
many small windows. ``np.median`` costs ~20 us a call whatever the size; these functions give
the same numbers, bit for bit: the middle order statistic for an odd count, and for an even
count the two middle ones averaged as ``np.mean`` does it, ``(0.0 + a + b) / 2`` (its sum
starts from 0.0, so a median of zeros is ``+0.0``, and a sum that overflows is infinite).
Which of two equal values (``-0.0``/``0.0``) sits in the middle does not matter: adding 0.0
gives the same number for both.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["median", "sliding_medians", "window_medians"]

# up to this many values, sorting a Python list is faster than np.median's partition
_SMALL = 128


def median(x: np.ndarray) -> float:
    """Median of the finite values of ``x`` (NaN if none): ``float(np.median(x[finite]))``."""
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return math.nan
    if n > _SMALL or x.dtype != np.float64:
        return float(np.median(x))
    v = sorted(x.tolist())
    h = n // 2
    if n % 2:
        return 0.0 + v[h]
    return (0.0 + v[h - 1] + v[h]) / 2


def _middle(v: np.ndarray, first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Medians of the runs ``v[first[i]:first[i] + count[i]]`` of the sorted finite values
    (NaN where ``count`` is 0)."""
    out = np.full(count.shape[0], np.nan)
    has = count > 0
    c = count[has]
    lo = v[first[has] + (c - 1) // 2]
    hi = v[first[has] + c // 2]
    with np.errstate(over="ignore"):
        out[has] = np.where(c % 2 == 1, 0.0 + lo, (0.0 + lo + hi) / 2)
    return out


def window_medians(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """:func:`median` of each consecutive window ``x[starts[i]:starts[i + 1]]`` (the last one
    to the end of ``x``); ``starts`` increasing from 0."""
    n = x.shape[0]
    k = starts.shape[0]
    if k == 0:
        return np.empty(0)
    window = np.repeat(np.arange(k), np.diff(np.append(starts, n)))
    fin = np.isfinite(x)
    v, w = x[fin].astype(np.float64), window[fin]
    v = v[np.lexsort((v, w))]  # by window, then by value
    count = np.bincount(w, minlength=k)
    first = np.concatenate(([0], np.cumsum(count)[:-1]))
    return _middle(v, first, count)


def sliding_medians(x: np.ndarray, width: int) -> np.ndarray:
    """:func:`median` of ``x[i:i + width]`` for every ``i`` (shorter windows at the end)."""
    n = x.shape[0]
    if n == 0:
        return np.empty(0)
    padded = np.full(n + width - 1, np.nan)
    padded[:n] = np.where(np.isfinite(x), x, np.nan)
    rows = np.sort(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1)  # NaN last
    count = np.isfinite(rows).sum(axis=1)
    return _middle(rows.ravel(), np.arange(n) * width, count)
