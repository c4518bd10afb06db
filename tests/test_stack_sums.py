"""The whole-stack sums of core.stack_sums give each row the single trainer's bits.

Compared byte for byte with the single trainer's own functions on each row, including rows
whose float32 sums overflow (the float64 fallbacks), NaN and Inf.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.layout import norms_by_reduceat, sumsq
from core.network import MLP
from core.spec import TrainingSpec
from core.stack_sums import (
    flat_moments,
    moments,
    moments_and_dead,
    segment_sumsq_batched,
    segment_sumsq_pair,
)
from core.stacked import StackedMLP
from core.trainer import _norm_segments

BOUNDS = np.array([0, 64, 96, 1120, 1152, 1184, 1185])  # 2-32-32-1: weight, bias per layer


def _rows(dtype: type, K: int = 6, n: int = 1185, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, n)).astype(dtype)


def _hex(a: np.ndarray) -> list[str]:
    return [float(v).hex() for v in np.asarray(a, dtype=np.float64).ravel().tolist()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_sums_are_the_single_trainers_fused_pass(dtype: type) -> None:
    """Weights and update: each row is ``_norm_segments`` of the row's [weights | update];
    a float32 overflow in either half redoes the whole row in float64, the other half too
    (its float32 sums would differ in the last bits)."""
    a, b = _rows(dtype, seed=1), _rows(dtype, seed=2)
    with np.errstate(over="ignore"):
        a[1, 100:110] *= 3e19  # weights' squares overflow float32, update's do not
        b[2, 5] = 4e19  # the update's
        a[3, 7] = np.inf
        b[4, 1000] = np.nan
    bounds2 = np.concatenate((BOUNDS[:-1], BOUNDS + BOUNDS[-1]))
    with np.errstate(all="ignore"):
        got = segment_sumsq_pair(a, b, BOUNDS, True)
        for k in range(len(a)):
            want = _norm_segments(np.concatenate((a[k], b[k])), bounds2)
            assert _hex(got[:, k].ravel()) == _hex(want), f"row {k}"
    assert got.dtype == np.float64  # redone rows: float64 throughout
    if dtype is np.float32:  # the fallback matters: summing the update alone differs
        alone = segment_sumsq_batched(b[1:2], BOUNDS)[0]
        assert _hex(alone) != _hex(got[1, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_pair_sums_stay_in_their_dtype_and_cast_to_the_single_trainers(dtype: type
                                                                             ) -> None:
    """Every sum finite: the sums as summed (no float64 copy); their exact casts are the
    single trainer's numbers, and so are their float64 square roots."""
    a, b = _rows(dtype, K=9, seed=6), _rows(dtype, K=9, seed=7)
    bounds2 = np.concatenate((BOUNDS[:-1], BOUNDS + BOUNDS[-1]))
    got = segment_sumsq_pair(a, b, BOUNDS, True)
    assert got.dtype == dtype and got.shape == (2, 9, len(BOUNDS) - 1)
    roots = np.sqrt(got.transpose(1, 0, 2), dtype=np.float64)
    for k in range(len(a)):
        want = _norm_segments(np.concatenate((a[k], b[k])), bounds2)
        assert _hex(got[:, k].ravel()) == _hex(want), f"row {k}"
        assert _hex(roots[k].ravel()) == _hex(np.sqrt(want)), f"row {k}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_sums_of_large_buffers_are_the_single_trainers_separate_passes(dtype: type
                                                                            ) -> None:
    """Not fused (past FUSED_NORMS_MAX): the single trainer's two calls, one per buffer."""
    a, b = _rows(dtype, K=2, n=300), _rows(dtype, K=2, n=300, seed=3)
    bounds = np.array([0, 100, 300])
    got = segment_sumsq_pair(a, b, bounds, False)
    for k in range(2):
        assert _hex(got[0, k]) == _hex(_norm_segments(a[k], bounds))
        assert _hex(got[1, k]) == _hex(_norm_segments(b[k], bounds))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_sums_are_the_single_trainers(dtype: type) -> None:
    g = _rows(dtype, seed=4)
    with np.errstate(over="ignore"):
        g[0, 500] = 1e30
        g[2, :3] = np.nan
    with np.errstate(all="ignore"):
        got = segment_sumsq_batched(g, BOUNDS)
        for k in range(len(g)):
            assert _hex(got[k]) == _hex(_norm_segments(g[k], BOUNDS)), f"row {k}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_sums_of_large_segments_are_the_single_trainers_blas_dots(dtype: type
                                                                          ) -> None:
    """Few large segments (past the reduceat rule): per member and segment the single
    trainer's BLAS dot, batched over the members; a non-finite dot is redone in float64 for
    that member and segment only."""
    bounds = np.array([0, 40000, 40100, 90000])
    assert not norms_by_reduceat(int(bounds[-1]), 3)
    g = _rows(dtype, K=5, n=int(bounds[-1]), seed=8)
    with np.errstate(over="ignore"):
        g[1, 50000:50010] *= 3e19  # float32 squares overflow in the third segment
        g[2, 7] = np.nan
        g[3, 40050] = np.inf
    with np.errstate(all="ignore"):
        got = segment_sumsq_batched(g, bounds)
        for k in range(len(g)):
            assert _hex(got[k]) == _hex(_norm_segments(g[k], bounds)), f"row {k}"
            for j in range(3):  # what the single trainer's dot gives
                seg = g[k, bounds[j]:bounds[j + 1]]
                s = float(np.dot(seg, seg))
                if math.isfinite(s):
                    assert float(got[k, j]).hex() == s.hex()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_moments_and_moments_are_the_single_networks_formulas(dtype: type) -> None:
    """Per row: a float64 sum and :func:`core.layout.sumsq` (float64 where float32
    overflows), then the single network's scalar mean and std."""
    rows = _rows(dtype, K=7, n=48, seed=5)
    with np.errstate(over="ignore"):
        rows[1] *= 1e19  # float32 squares overflow, values do not
        rows[2, 3] = np.inf
        rows[3, 0] = np.nan
        rows[4] = 0.0
        rows[5, :2] = [3e38, 3e38] if dtype is np.float32 else [1e308, 1e308]  # sum overflows
    sums, sqs = np.empty((2, len(rows)))
    mean, std = np.empty((2, len(rows)))
    with np.errstate(all="ignore"):
        flat_moments(rows, sums, sqs)
        moments(sums, sqs, np.full(len(rows), float(rows.shape[1])), mean, std)
        for k, row in enumerate(rows):
            n = row.size
            m = float(row.sum(dtype=np.float64)) / n
            q = sumsq(row) / n
            s = math.sqrt(max(q - m * m, 0.0)) if math.isfinite(q) else q
            assert (mean[k].hex(), std[k].hex()) == (m.hex(), float(s).hex()), f"row {k}"


@pytest.mark.parametrize("n", [1, 9, 48, 1000, 8192])
def test_flat_moments_through_a_float64_cast_are_the_single_networks(n: int) -> None:
    """float32 rows of up to one buffer's elements: cast into ``work``, then summed in
    float64, each row's sum is its ``sum(dtype=float64)`` (and the sums of squares are as
    without ``work``); the result says whether every sum of squares is finite."""
    rows = _rows(np.float32, K=5, n=n, seed=n) * np.float32(1e3)
    with np.errstate(over="ignore"):
        rows[1] *= np.float32(1e17)  # squares overflow float32: redone in float64
    assert n <= np.getbufsize()
    sums, sqs, sums2, sqs2 = np.empty((4, len(rows)))
    with np.errstate(all="ignore"):
        assert flat_moments(rows, sums, sqs, np.empty(rows.shape)) is True
        assert flat_moments(rows, sums2, sqs2) is True
        for k, row in enumerate(rows):
            assert float(sums[k]).hex() == float(row.sum(dtype=np.float64)).hex(), f"row {k}"
            assert float(sqs[k]).hex() == float(sumsq(row)).hex(), f"row {k}"
        assert _hex(sums) == _hex(sums2) and _hex(sqs) == _hex(sqs2)
        rows[3, 0] = np.inf
        assert flat_moments(rows, sums, sqs, np.empty(rows.shape)) is False


def test_a_cast_sum_past_one_buffer_would_differ() -> None:
    """Why ``flat_moments`` casts only rows of up to ``np.getbufsize()`` elements: past it,
    ``sum(dtype=float64)`` sums buffer by buffer, which a whole-row float64 sum does not."""
    rng = np.random.default_rng(11)
    n = 3 * np.getbufsize() + 17
    differs = 0
    for _ in range(5):
        row = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(np.float32)
        differs += float(row.sum(dtype=np.float64)) != float(np.add.reduce(
            row.astype(np.float64)))
    assert differs


def test_moments_and_dead_are_moments_and_the_single_networks_dead_fractions() -> None:
    """One division for means, stds and dead fractions gives :func:`moments`' numbers and
    the single network's ``1.0 - alive / units``; NaN where no alive count applies."""
    rng = np.random.default_rng(3)
    K, units = 9, [32, 5, 1]
    counts = np.array(units, dtype=np.float64) * 17
    sums = rng.standard_normal((K, 3)) * counts
    sqs = np.abs(rng.standard_normal((K, 3))) * counts * 4
    sqs[1, 0], sqs[2, 1], sums[3, 2] = np.inf, np.nan, np.inf
    alive = rng.integers(0, 6, (K, 3)).astype(np.float64)
    alive[:, 2] = np.nan  # the outputs: no dead fraction
    out = np.full((K, 3, 8), 7.0)[:, :, 2:6]  # a strided view, as the telemetry rows'
    mean, std = np.empty((2, K, 3))
    divisors = np.stack([counts, counts, [*units[:2], 1]])[:, None, :]
    with np.errstate(all="ignore"):
        moments_and_dead(np.stack([sums, sqs, alive]), divisors, out)
        moments(sums, sqs, counts, mean, std)
    assert _hex(out[:, :, 0]) == _hex(mean)
    assert _hex(out[:, :, 1]) == _hex(std)
    for k in range(K):
        for i in range(2):
            assert float(out[k, i, 2]).hex() == (1.0 - int(alive[k, i]) / units[i]).hex()
    assert np.isnan(out[:, 2, 2]).all() and (out[:, :, 3] == 7.0).all()
    # a fourth row is divided along (NaN over 1: the absent saturated fractions)
    out4 = np.full((K, 3, 8), 7.0)[:, :, 2:6]
    nan_row = np.full((1, K, 3), np.nan)
    with np.errstate(all="ignore"):
        moments_and_dead(np.concatenate([np.stack([sums, sqs, alive]), nan_row]),
                         np.concatenate([divisors, np.ones((1, 1, 3))]), out4)
    assert _hex(out4[:, :, :3]) == _hex(out[:, :, :3]) and np.isnan(out4[:, :, 3]).all()


def test_moments_and_dead_trusts_finite_sums_of_squares_only_when_told() -> None:
    """``sqs_finite`` skips the fallback for non-finite sums of squares: the same numbers
    when they are all finite; the caller must not claim it otherwise (the fallback is
    what gives an infinite sum of squares its own std)."""
    rng = np.random.default_rng(5)
    K, counts = 6, np.array([32.0, 5.0, 1.0]) * 7
    totals = np.stack([rng.standard_normal((K, 3)) * counts,
                       np.abs(rng.standard_normal((K, 3))) * counts * 4,
                       np.full((K, 3), 3.0)])
    divisors = np.stack([counts, counts, [32, 5, 1]])[:, None, :]
    told, checked = np.empty((2, K, 3, 4))
    moments_and_dead(totals, divisors, told, sqs_finite=True)
    moments_and_dead(totals, divisors, checked)
    assert _hex(told[:, :, :3]) == _hex(checked[:, :, :3])
    totals[0, 2, 1] = totals[1, 2, 1] = np.inf  # inf - inf: the spread alone is NaN
    with np.errstate(all="ignore"):
        moments_and_dead(totals, divisors, checked)
        moments_and_dead(totals, divisors, told, sqs_finite=True)
    assert checked[2, 1, 1] == np.inf and np.isnan(told[2, 1, 1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden", [
    [13, 32, 7],
    [2, 64],
    [32, 1, 5],
], ids=["13-32-7", "2-64", "32-1-5"])
def test_activation_statistics_of_many_members_are_their_networks(hidden: list[int],
                                                                  dtype: str) -> None:
    """Many members, odd widths, a one-unit layer: every member's activation statistics
    (column sums and sums of squares reduced per layer for the whole stack at once) are its
    own network's, bit for bit."""
    spec = TrainingSpec.model_validate({
        "seed": 0, "dtype": dtype,
        "data": {"source": "synthetic", "name": "blobs", "n_samples": 64, "n_features": 3},
        "model": {"hidden": [{"units": u} for u in hidden],
                  "init": {"scheme": "normal", "std": 0.7}}})
    nets = [MLP(spec, np.random.default_rng(k)) for k in range(37)]
    stack = StackedMLP(nets)
    X = np.random.default_rng(9).standard_normal((29, 3)).astype(dtype)
    with np.errstate(all="ignore"):
        out = stack.forward(X)
        got = np.stack(stack.activation_stats(out), axis=2)
        for k, net in enumerate(nets):
            table = net.activation_stat_array(net.forward(X))
            assert _hex(got[k]) == _hex(table), f"member {k}"
