"""The diagnosis's fast paths give the straightforward computation's numbers, bit for bit.

``core.diagnostics.medians`` replaces per-window ``np.median`` calls (a Python loop) by one
sort; these tests compare it with the loop it replaces on generated series holding NaN,
+-Inf, signed zeros, subnormals and values whose sum overflows.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.diagnostics.medians import (
    column_medians,
    median,
    nan_column_medians,
    sliding_medians,
    window_medians,
)

VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, 1.0, 2.0, math.nan, math.inf]),
)
SERIES = st.lists(VALUES, min_size=0, max_size=300).map(lambda v: np.array(v, dtype=np.float64))


def reference(x: np.ndarray) -> float:
    """The detectors' median before: np.median of the finite values."""
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        return float(np.median(x)) if x.size else math.nan


def same(a: float, b: float) -> bool:
    """Equal as the report's JSON would print them (NaN == NaN, -0.0 != 0.0)."""
    return repr(float(a)) == repr(float(b))


@settings(max_examples=400, deadline=None)
@given(SERIES)
def test_median_is_np_median_of_the_finite_values(x: np.ndarray) -> None:
    assert same(median(x), reference(x))


@settings(max_examples=300, deadline=None)
@given(SERIES, st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_window_medians_are_the_per_window_loop(x: np.ndarray, widths: list[int]) -> None:
    starts = np.cumsum([0, *widths])
    starts = starts[starts < max(len(x), 1)] if len(x) else starts[:0]
    got = window_medians(x, starts)
    bounds = [*starts.tolist(), len(x)]
    want = [reference(x[a:b]) for a, b in itertools.pairwise(bounds)]
    assert len(got) == len(want)
    assert all(same(g, w) for g, w in zip(got, want, strict=True))


@settings(max_examples=300, deadline=None)
@given(SERIES, st.integers(1, 25))
def test_sliding_medians_are_the_per_start_loop(x: np.ndarray, width: int) -> None:
    got = sliding_medians(x, width)
    want = [reference(x[i:i + width]) for i in range(len(x))]
    assert all(same(g, w) for g, w in zip(got, want, strict=True)) and len(got) == len(want)


@settings(max_examples=300, deadline=None)
@given(SERIES, st.integers(1, 6))
def test_column_medians_are_the_per_column_loop(x: np.ndarray, cols: int) -> None:
    m = x[: len(x) - len(x) % cols].reshape(-1, cols)
    got = column_medians(m)
    want = [reference(m[:, k]) for k in range(cols)]
    assert all(same(g, w) for g, w in zip(got, want, strict=True)) and len(got) == cols


@settings(max_examples=300, deadline=None)
@given(SERIES, st.integers(1, 6))
def test_nan_column_medians_are_np_nanmedian(x: np.ndarray, cols: int) -> None:
    m = x[: len(x) - len(x) % cols].reshape(-1, cols)
    m = np.where(np.isfinite(m), m, np.nan)
    got = nan_column_medians(m)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(m, axis=0)
    assert all(same(g, w) for g, w in zip(got, want, strict=True)) and len(got) == cols
