"""Per member and layer activation statistics of a stack's last training pass.

:class:`ActivationStats` gives :class:`core.stacked.StackedMLP` its
:meth:`~ActivationStats.activation_stats`: each member's mean, std, dead and saturated
fractions per layer, exactly the numbers (bits) its own network's
:meth:`core.network.MLP.activation_stat_array` gives, computed for the whole stack with the
single network's sums batched over the members (:mod:`core.stack_sums`).
"""

from __future__ import annotations

import itertools
from abc import abstractmethod

import numpy as np

from core.activations import ActivationFn
from core.stack_buffers import Buffers
from core.stack_sums import all_finite, flat_moments, moments

__all__ = ["ActivationStats"]

Array = np.ndarray


class ActivationStats:
    """The activation statistics of :class:`core.stacked.StackedMLP`, a mixin: the stacked
    network owns the architecture, the work arrays and the caches declared here."""

    dtype: np.dtype
    sizes: list[int]
    n_layers: int
    activations: list[ActivationFn]
    _buffers: dict[int, Buffers]  # the training pass's work arrays, by batch size
    _bs: int  # the last training pass's batch size
    _ones_rows: dict[tuple[int, np.dtype], Array]
    _hidden_copies: dict[tuple[int, int], Array]
    _col_offsets: list[int]
    _starts: Array

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of members K."""

    @abstractmethod
    def hidden_activation(self, i: int) -> Array:
        """Hidden layer ``i``'s activations of the last training pass, C-contiguous."""

    def _ones(self, n: int) -> Array:
        """``n`` ones in the training dtype (cached): column sums as a matrix-vector product,
        the single network's ``ones``."""
        ones = self._ones_rows.get((n, self.dtype))
        if ones is None:
            ones = self._ones_rows[(n, self.dtype)] = np.ones(n, self.dtype)
        return ones

    def activation_stats(self, outputs: Array, out: Array | None = None
                         ) -> tuple[Array, Array, Array, Array]:
        """Per member and layer ``(mean, std, dead_fraction, saturated_fraction)``, each
        ``(K, n_layers)`` float64 (NaN where a statistic does not apply), of the last training
        pass: for every member exactly the numbers (bits) of
        :meth:`core.network.MLP.activation_stat_array` on its own network.

        The single network's sums are reproduced call for call, batched over the members
        (each batched call runs the same routine per member on the same shape and strides):
        with one hidden layer, each layer's whole-buffer float64 sum and BLAS dot; with two
        or more, the column sums of the ``(batch, all hidden units)`` buffer as a BLAS
        matrix-vector product and the column sums of squares with ``einsum`` on that very
        layout (a member-major copy, :meth:`_hidden_buffer`), reduced per layer with
        ``reduceat`` (both in one call); the outputs as one flat buffer. Means and stds of all layers then come
        from the single network's float64 formulas in one pass
        (:func:`core.stack_sums.moments`). Dead and saturated fractions are counts, exact
        whichever way they are counted.

        ``out`` (``(K, n_layers, 4)`` float64, e.g. a view of the telemetry rows) receives
        them in place; the four returned arrays are then its columns."""
        K, L = self.size, self.n_layers
        if out is None:
            out = np.empty((K, L, 4))
        out[:, :, 2:] = np.nan
        sums, sqs = np.empty((2, K, L))  # per member and layer: sum, sum of squares
        if L == 2:
            a = self.hidden_activation(0)
            flat_moments(a.reshape(K, -1), sums[:, 0], sqs[:, 0])
            col_sum = None
            if self.activations[0].name == "relu":  # alive units: column sums > 0 (below)
                col_sum = np.matmul(self._ones(a.shape[1]), a)
            self._unit_stats(0, a, col_sum, out)
        elif L > 2:
            self._hidden_stats(sums, sqs, out)
        flat_moments(outputs.reshape(K, -1), sums[:, L - 1], sqs[:, L - 1])
        counts = np.array(self.sizes[1:], dtype=np.float64) * outputs.shape[1]
        moments(sums, sqs, counts, out[:, :, 0], out[:, :, 1])
        return out[:, :, 0], out[:, :, 1], out[:, :, 2], out[:, :, 3]

    def _hidden_buffer(self) -> Array:
        """Every member's hidden activations of the last training pass in the single
        network's layout: ``(K, batch, all hidden units)``, member ``k``'s block a
        C-contiguous ``(batch, all hidden units)`` array with the layers side by side (one
        copy per pass into a buffer reused across steps)."""
        buf = self._buffers[self._bs]
        key = (self.size, self._bs)
        whole = self._hidden_copies.get(key)
        if whole is None:
            if len(self._hidden_copies) > 2:  # e.g. full and last batches: both kept
                self._hidden_copies.clear()
            whole = self._hidden_copies[key] = np.empty((*key, self._col_offsets[-1]),
                                                        self.dtype)
        for i, (lo, hi) in enumerate(itertools.pairwise(self._col_offsets)):
            np.copyto(whole[:, :, lo:hi], buf.act[i])
        return whole

    def _hidden_stats(self, sums: Array, sqs: Array, out: Array) -> None:
        """:meth:`activation_stats`' hidden layers for two or more of them: per member the
        single network's ``_hidden_stats`` sums into ``sums[:, :-1]`` and ``sqs[:, :-1]``
        (fallbacks per member), dead and saturated fractions into ``out``."""
        act = self._hidden_buffer()
        K, batch, units = act.shape
        L, starts = self.n_layers, self._starts
        # column sums, then column sums of squares: reduced per layer in one call
        columns = np.empty((2 * K, units), act.dtype)
        col_sum, col_sq = columns[:K], columns[K:]
        np.matmul(self._ones(batch), act, out=col_sum)
        np.einsum("kij,kij->kj", act, act, out=col_sq)
        per_layer = np.add.reduceat(columns, starts, axis=1)
        sums[:, :-1] = per_layer[:K]
        sqs[:, :-1] = per_layer[K:]
        if not all_finite(per_layer):
            self._redo_overflowing(act, columns, per_layer, sums, sqs)
        relu = [i for i, a in enumerate(self.activations) if a.name == "relu"]
        if relu:  # alive units: column sums > 0 (as in _unit_stats), every layer at once
            alive = np.add.reduceat(col_sum > 0, starts, axis=1)
            dead = np.divide(alive, self.sizes[1:-1])
            if len(relu) == L - 1:
                np.subtract(1.0, dead, out=out[:, :-1, 2])
            else:
                out[:, relu, 2] = 1.0 - dead[:, relu]
        for i, (lo, hi) in enumerate(itertools.pairwise(self._col_offsets)):
            if i not in relu:
                self._unit_stats(i, act[:, :, lo:hi], None, out)

    def _redo_overflowing(self, act: Array, columns: Array, per_layer: Array, sums: Array,
                          sqs: Array) -> None:
        """Redo in float64, from their activations, the per-layer sums (``sums[:, :-1]``) of
        members whose column sums are not all finite, and the sums of squares of those whose
        float32 column sums of squares are not (``columns``: the column sums then sums of
        squares, ``per_layer`` their reductions), as the single network does. Only rows with
        a non-finite reduction are looked at: a non-finite column makes its layer's sum so."""
        K, starts = act.shape[0], self._starts
        for r in np.flatnonzero(~np.isfinite(per_layer).all(axis=1)).tolist():
            k = r % K
            if np.isfinite(columns[r]).all():
                continue  # finite columns whose sum overflows: as they are
            if r < K:
                sums[k, :-1] = np.add.reduceat(act[k].sum(axis=0, dtype=np.float64), starts)
            elif act.dtype != np.float64:
                a64 = act[k].astype(np.float64)  # float32 overflow of the squares
                sqs[k, :-1] = np.add.reduceat(np.einsum("ij,ij->j", a64, a64), starts)

    def _unit_stats(self, i: int, a: Array, col_sum: Array | None, out: Array) -> None:
        """Dead or saturated fraction of hidden layer ``i`` (activations ``a``, ``(K, batch,
        units)``; ``col_sum`` its column sums when known) into ``out[:, i]``: counts of units
        or outputs, the same numbers however they are counted."""
        act_fn = self.activations[i]
        units = a.shape[2]
        if act_fn.name == "relu" and col_sum is not None:
            # a unit is dead on this batch when its output is <= 0 for every example: for
            # outputs >= 0 (or NaN), exactly when their column sum is not > 0
            out[:, i, 2] = 1.0 - np.count_nonzero(col_sum > 0, axis=1) / units
        elif act_fn.family == "relu":
            out[:, i, 2] = 1.0 - np.count_nonzero(a.max(axis=1) > 0, axis=1) / units
        elif act_fn.family == "saturating":
            in_tail = np.abs(a - act_fn.saturation_center) > act_fn.saturation_halfwidth
            out[:, i, 3] = np.count_nonzero(in_tail, axis=(1, 2)) / (units * a.shape[1])
