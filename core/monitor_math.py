"""Elementwise math of the stack monitor that equals the scalar monitor's, bit for bit.

:class:`core.batched_monitor.StackMonitor` updates every member's monitor state with array
operations; where NumPy's result can differ from the scalar :class:`core.Monitor`'s Python
arithmetic (the last bit of a log or an exp, NaN in ``max`` and ``min``), these functions
compute what Python computes, for each element.
"""

from __future__ import annotations

import math

import numpy as np

from core.diagnostics.monitor import HARM, MAX_SPREAD, MIN_SPREAD, RECENT

__all__ = ["any_true", "exp_each", "log_each", "py_max", "py_min", "setback_rows",
           "warm_medians"]

Array = np.ndarray


def log_each(v: Array) -> Array:
    """:func:`core.diagnostics.series.safe_log` of each element (math.log: bitwise equal;
    NumPy's own log differs from the C library's in the last bit for some inputs)."""
    try:  # the common case: every element > 0 (or NaN, whose log is NaN either way)
        return np.fromiter(map(math.log, v.tolist()), np.float64, len(v))
    except ValueError:  # zero or negative elements
        pos = v > 0.0
        out = np.fromiter(map(math.log, np.where(pos, v, 1.0).tolist()), np.float64, len(v))
        return np.where(pos, out, np.where(v == 0.0, -745.0, math.nan))


def exp_each(v: Array) -> Array:
    """:func:`math.exp` of each element (inf where it overflows)."""
    try:
        return np.fromiter(map(math.exp, v.tolist()), np.float64, len(v))
    except OverflowError:
        pass
    out = []
    for x in v.tolist():
        try:
            out.append(math.exp(x))
        except OverflowError:
            out.append(math.inf)
    return np.array(out)


def any_true(m: Array) -> bool:
    """``m.any()`` of a bool vector (counting is cheaper than NumPy's reduction machinery)."""
    return bool(np.count_nonzero(m))


def py_max(a: Array | float, b: Array | float) -> Array:
    """Python's ``max(a, b)`` elementwise (``b`` only if ``b > a``: NaN handling included)."""
    return np.where(b > a, b, a)


def py_min(a: Array | float, b: Array | float) -> Array:
    """Python's ``min(a, b)`` elementwise (``b`` only if ``b < a``)."""
    return np.where(b < a, b, a)


def setback_rows(recent: Array, best: Array, l0: Array) -> Array:
    """Per column of ``recent`` (the last RECENT losses, rows oldest first): the setback test
    ``median >= 2 L*`` and ``median >= L* + HARM max(L0 - L*, 0)`` of the scalar state.

    The median is >= both levels when more than half the losses are >= the larger of them
    (a NaN level: none is). Every column that can be in a setback is finite (a non-finite
    loss is replayed), and np.maximum of x and 0.0 differs from Python's max only in the
    sign of a zero, which the sum and the comparison cannot see: no sort is needed."""
    level = l0 - best
    np.maximum(level, 0.0, out=level)
    level *= HARM
    level += best
    np.maximum(level, 2.0 * best, out=level)
    return np.add.reduce(recent >= level, axis=0) > RECENT // 2


def warm_medians(lgs: Array, lls: Array) -> tuple[Array, Array, Array]:
    """The warm-up's baseline, spread and log L0 of each row from its log norms ``lgs`` and
    log losses ``lls`` so far (columns): ``MonitorState.update``'s medians (a sort of a few
    values gives the sorted list's elements) and its clipped MAD."""
    n = lgs.shape[1]
    wl = np.sort(lgs, axis=1)
    base = wl[:, n // 2] if n % 2 else 0.5 * (wl[:, n // 2 - 1] + wl[:, n // 2])
    if n >= 3:
        mad = 1.4826 * np.sort(np.abs(lgs - base[:, None]), axis=1)[:, n // 2]
        spread = py_min(MAX_SPREAD, py_max(MIN_SPREAD, mad))
    else:
        spread = np.full(len(lgs), min(MAX_SPREAD, max(MIN_SPREAD, MIN_SPREAD)))
    return base, spread, np.sort(lls, axis=1)[:, (n - 1) // 2]
