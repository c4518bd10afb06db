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
import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["column_medians", "median", "nan_column_medians", "sliding_medians", "window_medians"]

# up to this many values, sorting a Python list is faster than np.median's partition
_SMALL = 256


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
    rows = np.sort(sliding_window_view(padded, width), axis=1)  # NaN last
    count = np.isfinite(rows).sum(axis=1)
    return _middle(rows.ravel(), np.arange(n) * width, count)


def column_medians(x: np.ndarray) -> np.ndarray:
    """:func:`median` of each column of the 2-D ``x``."""
    cols = np.sort(np.where(np.isfinite(x), x, np.nan), axis=0).T  # NaN last
    count = np.isfinite(cols).sum(axis=1)
    return _middle(cols.ravel(), np.arange(cols.shape[0]) * cols.shape[1], count)


def nan_column_medians(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=0)`` of a 2-D float64 ``a`` whose non-finite values are NaN, bit
    for bit (and without its warning for an all-NaN column).

    Below 600 rows NumPy takes a masked-array median: the values sorted by ``argsort`` with
    NaN as +inf, the middle pair (the middle value twice for an odd count) summed along the
    axis from 0.0 and halved. Larger arrays go to NumPy itself (a median per column)."""
    rows = a.shape[0]
    if rows == 0 or rows >= 600 or a.dtype != np.float64:
        with warnings.catch_warnings():  # an all-NaN column's "Mean of empty slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(np.nanmedian(a, axis=0))
    nan = np.isnan(a)
    filled = np.where(nan, np.inf, a)
    ordered = np.take_along_axis(filled, filled.argsort(axis=0), axis=0)
    count = rows - nan.sum(axis=0)
    h = count // 2
    lo = np.where(count % 2 == 1, h, h - 1)
    pair = np.take_along_axis(ordered, np.stack([lo, h]).clip(0, rows - 1), axis=0)
    with np.errstate(over="ignore"):
        out = np.true_divide(np.where(count > 0, pair, 0.0).sum(axis=0), 2.0)
    out[count == 0] = np.nan
    return out
