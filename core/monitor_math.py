"""Elementwise math of the stack monitor that equals the scalar monitor's, bit for bit.

:class:`core.batched_monitor.StackMonitor` updates every member's monitor state with array
operations; where NumPy's result can differ from the scalar :class:`core.Monitor`'s Python
arithmetic (the last bit of a log or an exp, NaN in ``max`` and ``min``), these functions
compute what Python computes, for each element.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["all_true", "any_true", "exp_each", "log_each", "py_max", "py_min"]

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


def all_true(m: Array) -> bool:
    """``m.all()`` of a bool vector, by counting."""
    return int(np.count_nonzero(m)) == m.shape[0]


def py_max(a: Array | float, b: Array | float) -> Array:
    """Python's ``max(a, b)`` elementwise (``b`` only if ``b > a``: NaN handling included)."""
    return np.where(b > a, b, a)


def py_min(a: Array | float, b: Array | float) -> Array:
    """Python's ``min(a, b)`` elementwise (``b`` only if ``b < a``)."""
    return np.where(b < a, b, a)
