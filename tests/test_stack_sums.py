"""The whole-stack sums of core.stack_sums give each row the single trainer's bits.

Compared byte for byte with the single trainer's own functions on each row, including rows
whose float32 sums overflow (the float64 fallbacks), NaN and Inf.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.layout import sumsq
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
            assert _hex(got[k].ravel()) == _hex(want), f"row {k}"
    if dtype is np.float32:  # the fallback matters: summing the update alone differs
        alone = segment_sumsq_batched(b[1:2], BOUNDS)[0]
        assert _hex(alone) != _hex(got[1, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_sums_of_large_buffers_are_the_single_trainers_separate_passes(dtype: type
                                                                            ) -> None:
    """Not fused (past FUSED_NORMS_MAX): the single trainer's two calls, one per buffer."""
    a, b = _rows(dtype, K=2, n=300), _rows(dtype, K=2, n=300, seed=3)
    bounds = np.array([0, 100, 300])
    got = segment_sumsq_pair(a, b, bounds, False)
    for k in range(2):
        assert _hex(got[k, 0]) == _hex(_norm_segments(a[k], bounds))
        assert _hex(got[k, 1]) == _hex(_norm_segments(b[k], bounds))


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
    with np.errstate(all="ignore"):
        moments_and_dead(np.stack([sums, sqs, alive]),
                         np.stack([counts, counts, [*units[:2], 1]])[:, None, :], out)
        moments(sums, sqs, counts, mean, std)
    assert _hex(out[:, :, 0]) == _hex(mean)
    assert _hex(out[:, :, 1]) == _hex(std)
    for k in range(K):
        for i in range(2):
            assert float(out[k, i, 2]).hex() == (1.0 - int(alive[k, i]) / units[i]).hex()
    assert np.isnan(out[:, 2, 2]).all() and (out[:, :, 3] == 7.0).all()


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
