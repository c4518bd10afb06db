"""What a stack step's numbers say per member: its per-layer figures and its first non-finite.

:func:`layer_figures` writes every member's per-layer norms and activation statistics into
the step's telemetry rows with a fixed number of whole-stack NumPy calls (which figures of a
row apply: :func:`present_mask`); :func:`locate_non_finite` finds where a member's first
non-finite value appeared, in the single trainer's order.
"""

from __future__ import annotations

import numpy as np

from core.layout import FUSED_NORMS_MAX
from core.recording import n_values
from core.stack_sums import segment_sumsq_pair
from core.stacked import StackedMLP
from core.telemetry import NonFiniteEvent

__all__ = ["UpdateSums", "layer_figures", "locate_non_finite", "present_mask"]

Array = np.ndarray


def present_mask(n_layers: int, stat_mask: Array, activation_stats: bool) -> Array:
    """Which figures of a row apply (as the single trainer's ``_present_mask``)."""
    present = np.ones(n_values(n_layers), dtype=bool)
    if n_layers:
        layer_part = present[4:].reshape(n_layers, 8)
        layer_part[:, 4:] = stat_mask if activation_stats else False
    return present


class UpdateSums:
    """The per-segment sums of squares of the updated weights and of the update (the single
    trainer's, see :func:`core.stack_sums.segment_sumsq_pair`), taken group by group as the
    optimizer applies a step (its ``group_done``): a large stack's group is still in cache.

    ``sums`` after the step: ``(2, K, segments)``, weights then update, float64 or (one
    group, all finite) the float32 sums whose casts are the single trainer's numbers.
    """

    def __init__(self, members: int, bounds: Array, n_params: int) -> None:
        self.members = members
        self.bounds = bounds
        # the single trainer's sums over [weights | update] side by side (up to
        # FUSED_NORMS_MAX parameters)
        self.fused = n_params <= FUSED_NORMS_MAX
        self.sums: Array | None = None

    def __call__(self, rows: slice, params: Array, delta: Array) -> None:
        part = segment_sumsq_pair(params, delta, self.bounds, self.fused)
        if len(params) == self.members:
            self.sums = part
            return
        if self.sums is None:
            self.sums = np.empty((2, self.members, len(self.bounds) - 1))
        self.sums[:, rows] = part  # a float32 sum's cast is exact


def layer_figures(net: StackedMLP, vals: Array, both: Array, layer_gsq: Array, w_gsq: Array,
                  out: Array, losses: Array, grad_norm: Array,
                  activation_stats: bool) -> tuple[Array, Array | None]:
    """Write every member's per-layer figures into ``vals`` ``(K, n_values)`` (a fixed
    number of whole-stack NumPy calls) given ``both``, the step's ``UpdateSums.sums``;
    returns whether every recorded number of a row is finite (the single trainer's check)
    and the ``(K, L)`` activation stds (None when not recorded)."""
    K, L = vals.shape[0], net.n_layers
    layers = vals[:, 4:].reshape(K, L, 8)
    np.sqrt(layer_gsq, out=layers[:, :, 0])
    np.sqrt(w_gsq, out=layers[:, :, 1])
    np.sqrt(both[:, :, 0::2].transpose(1, 2, 0), out=layers[:, :, 2:4], dtype=np.float64)
    check = losses + grad_norm
    if not activation_stats:
        layers[:, :, 4:] = np.nan
        check += layers[:, :, 2].sum(axis=1)
        return np.isfinite(check), None
    _, a_std, _, _ = net.activation_stats(out, out=layers[:, :, 4:])
    # per member the sums of its weight norms and of its activation means, each summed
    # layer after layer (as the single trainer's Python sums), added in the single
    # trainer's order: its check, finite exactly when every term is (or when its sums are)
    per_member = layers[:, :, 2:5:2].sum(axis=1)
    check += per_member[:, 0]
    check += per_member[:, 1]
    return np.isfinite(check), a_std


def locate_non_finite(net: StackedMLP, r: int, step: int, loss: float, out: Array,
                      layer_gsq: Array, acts: bool) -> NonFiniteEvent:
    """As the single trainer: activations (forward, by layer), the loss, gradients
    (highest layer first), then the updated weights, of member row ``r``."""
    if acts:
        for i in range(net.n_layers - 1):
            a = net.hidden_activation(i)[r]
            if not np.isfinite(a).all():
                return NonFiniteEvent(step, i, "activation", _nan_or_inf(a))  # type: ignore[arg-type]
    if not np.isfinite(out[r]).all():
        return NonFiniteEvent(step, net.n_layers - 1, "activation", _nan_or_inf(out[r]))  # type: ignore[arg-type]
    if not np.isfinite(loss):
        return NonFiniteEvent(step, None, "loss", "nan" if np.isnan(loss) else "inf")
    for i in range(net.n_layers - 1, -1, -1):
        if not np.isfinite(layer_gsq[r, i]):
            return NonFiniteEvent(step, i, "gradient",
                                  "nan" if np.isnan(layer_gsq[r, i]) else "inf")
    for i in range(net.n_layers):
        w = net.layout.layer_segment(net.flat[r], i)
        if not np.isfinite(w).all():
            return NonFiniteEvent(step, i, "weight", _nan_or_inf(w))  # type: ignore[arg-type]
    return NonFiniteEvent(step, None, "loss", "nan")


def _nan_or_inf(x: Array) -> str:
    return "nan" if np.isnan(x).any() else "inf"
