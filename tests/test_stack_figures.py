"""layer_figures' finiteness check is the single trainer's, row by row.

The single trainer's ``_fill_row`` calls a row finite when ``loss + grad_norm + sum(weight
norms) + sum(activation means)`` is, its sums Python's (layer after layer). With many layers
the order matters at float64's edge: finite terms whose running sum overflows make the row
non-finite for it, so they must for the stack too.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np

from core.stack_figures import UpdateSums, layer_figures
from core.stacked import StackedMLP

Array = np.ndarray


class _Net:
    """What layer_figures reads of a stacked network, with given activation means."""

    def __init__(self, flat: Array, means: Array) -> None:
        self.flat = flat
        self.n_layers = means.shape[1]
        self.means = means

    def activation_stats(self, outputs: Array, out: Array) -> tuple[Array, Array, Array, Array]:
        out[:, :, 0] = self.means
        out[:, :, 1:] = 0.0
        return out[:, :, 0], out[:, :, 1], out[:, :, 2], out[:, :, 3]


def test_a_rows_check_sums_its_figures_in_the_single_trainers_order() -> None:
    K, L = 5, 9  # nine layers: NumPy's pairwise sums would group them otherwise
    bounds = np.arange(0, 2 * L + 1) * 3  # per layer a weight then a bias segment
    flat = np.ones((K, int(bounds[-1])))
    delta = np.zeros_like(flat)
    means = np.zeros((K, L))
    means[1, 4] = np.nan
    means[2, :4] = [1e308, 0.0, 1e308, -1e308]  # finite, but 1e308 + 1e308 on the way
    losses = np.array([0.5, 0.5, 0.5, np.inf, 0.5])
    grad_norm = np.ones(K)
    means[4, :3] = [-1e308, 1e308, 1e308]  # ends at 1e308 summed in order: finite
    layer_gsq = np.ones((K, L))
    vals = np.empty((K, 4 + 8 * L))
    with np.errstate(all="ignore"):
        sums = UpdateSums(K, bounds, flat.shape[1])
        sums(slice(None), flat, delta)
        assert sums.sums is not None
        finite, a_std = layer_figures(cast(StackedMLP, _Net(flat, means)), vals, sums.sums,
                                      layer_gsq, layer_gsq, np.zeros((K, 1, 1)),
                                      losses, grad_norm, True)
        for k in range(K):
            weight_norms = [math.sqrt(3.0)] * L
            check = losses[k] + grad_norm[k] + sum(weight_norms)
            check += sum(means[k].tolist())
            assert bool(finite[k]) == math.isfinite(check), f"row {k}"
    assert finite.tolist() == [True, False, False, False, True]
    assert a_std is not None and a_std.shape == (K, L)
    # NumPy's pairwise sum of row 2's means stays finite: the order is what decides
    assert math.isfinite(float(means[2].sum()))
