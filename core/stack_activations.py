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
from dataclasses import dataclass

import numpy as np

from core.activations import ActivationFn
from core.stack_buffers import Buffers
from core.stack_sums import all_finite, flat_moments, moments, moments_and_dead

__all__ = ["ActivationStats"]

Array = np.ndarray


def _as_rows(dst: Array, src: Array) -> tuple[Array, Array]:
    """``dst`` and ``src`` ``(..., n)`` as ``(..., 1)`` items of ``n`` elements' bytes when
    both last axes are contiguous (else as they are): copying them copies the same bits, one
    item per row of ``n`` (a third cheaper than element by element for rows of a few dozen
    elements)."""
    row = np.dtype((np.void, src.shape[-1] * src.itemsize))
    try:
        return dst.view(row), src.view(row)
    except ValueError:  # a last axis not contiguous
        return dst, src


@dataclass(slots=True)
class _HiddenWork:
    """The work arrays of :meth:`ActivationStats._hidden_stats` for one training pass's
    work arrays ``buffers`` (made once, reused every step while those are the pass's).

    ``columns`` is one flat array, reduced per member and layer by one ``reduceat`` at
    ``starts``: the column sums ``(K, units)`` (the single network's layout), then the column
    sums of squares (per layer ``(K, layer units)``, layer after layer, when ``by_layer``;
    else ``(K, units)``), then, with ReLU layers, the column sums' ``> 0`` as 0/1.
    """

    buffers: Buffers
    copy: Array  # (K, batch, units): every member's hidden activations, the single layout
    rows: list[tuple[Array, Array]]  # per layer (copy's columns, work array) as row items
    columns: Array
    col_sum: Array  # (K, units) view of columns
    col_sq: list[Array]  # per layer (K, layer units) views (by_layer), else one (K, units)
    flags: Array | None  # (K, units) view: column sum > 0, with ReLU layers
    starts: Array
    by_layer: bool
    relu: list[int]  # the ReLU hidden layers (dead fractions from the column sums)
    others: list[int]  # the other hidden layers
    totals: Array  # (4, K, n_layers) float64: sums, sums of squares, alive units (else
    # NaN), NaN (the saturated fractions' column, written by the division: see divisors)
    divisors: Array  # (4, 1, n_layers): counts, counts, units (1 for the outputs), 1
    # (K, outputs' elements) float64: flat_moments' cast, when float32 outputs fit one buffer
    # (np.getbufsize() when the work arrays are made: a run does not change it)
    outputs64: Array | None


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
    _col_offsets: list[int]
    _starts: Array
    _hidden_work: dict[int, _HiddenWork] | None = None  # by batch size (made on first use)

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
        or more, :meth:`_hidden_stats`; the outputs as one flat buffer. Means and stds of all
        layers then come from the single network's float64 formulas in one pass
        (:func:`core.stack_sums.moments`; with two or more hidden layers
        :func:`core.stack_sums.moments_and_dead`, the ReLU dead fractions along). Dead and
        saturated fractions are counts, exact whichever way they are counted.

        ``out`` (``(K, n_layers, 4)`` float64, e.g. a view of the telemetry rows) receives
        them in place; the four returned arrays are then its columns."""
        K, L = self.size, self.n_layers
        if out is None:
            out = np.empty((K, L, 4))
        if L > 2:
            work = self._work()
            totals = work.totals  # per member and layer: sum, sum of squares, alive units
            sqs_finite = self._hidden_stats(work, totals[0], totals[1], totals[2])
            flat_out = outputs.reshape(K, -1)
            sqs_finite &= flat_moments(flat_out, totals[0, :, -1], totals[1, :, -1],
                                       work.outputs64)
            moments_and_dead(totals, work.divisors, out, sqs_finite)  # out[:, :, 3]: NaN
            for i in work.others:
                self._unit_stats(i, work.buffers.act[i], None, out)
            return out[:, :, 0], out[:, :, 1], out[:, :, 2], out[:, :, 3]
        out[:, :, 2:] = np.nan
        sums, sqs = np.empty((2, K, L))  # per member and layer: sum, sum of squares
        if L == 2:
            a = self.hidden_activation(0)
            flat_moments(a.reshape(K, -1), sums[:, 0], sqs[:, 0])
            col_sum = None
            if self.activations[0].name == "relu":  # alive units: column sums > 0
                col_sum = np.matmul(self._ones(a.shape[1]), a)
            self._unit_stats(0, a, col_sum, out)
        counts = np.array(self.sizes[1:], dtype=np.float64) * outputs.shape[1]
        flat_moments(outputs.reshape(K, -1), sums[:, L - 1], sqs[:, L - 1])
        moments(sums, sqs, counts, out[:, :, 0], out[:, :, 1])
        return out[:, :, 0], out[:, :, 1], out[:, :, 2], out[:, :, 3]

    def _work(self) -> _HiddenWork:
        """The last training pass's :class:`_HiddenWork` (made when its work arrays are new)."""
        cache = self._hidden_work
        if cache is None:
            cache = self._hidden_work = {}
        buf = self._buffers[self._bs]
        work = cache.get(self._bs)
        if work is None or work.buffers is not buf:
            if len(cache) > 2:  # e.g. full and last batches: both kept
                cache.clear()
            work = cache[self._bs] = self._new_work(buf)
        return work

    def _new_work(self, buf: Buffers) -> _HiddenWork:
        K, batch = self.size, self._bs
        offsets = self._col_offsets
        units = offsets[-1]
        copy = np.empty((K, batch, units), self.dtype)
        rows = [_as_rows(copy[:, :, lo:hi], a)
                for (lo, hi), a in zip(itertools.pairwise(offsets), buf.act, strict=True)]
        # column sums of squares straight from the work arrays when their einsum's inner loop
        # runs along a layer's units (>= 2 of them) as the single network's does
        by_layer = min(hi - lo for lo, hi in itertools.pairwise(offsets)) > 1
        relu = [i for i, a in enumerate(self.activations) if a.name == "relu"]
        columns = np.empty((3 if relu else 2) * K * units, self.dtype)
        col_sum = columns[:K * units].reshape(K, units)
        member = (np.arange(K)[:, None] * units + self._starts).ravel()
        if by_layer:
            col_sq = [columns[K * (units + lo):K * (units + hi)].reshape(K, hi - lo)
                      for lo, hi in itertools.pairwise(offsets)]
            sq_starts = K * units + (K * np.array(offsets[:-1])[:, None]
                                     + np.arange(K) * np.diff(offsets)[:, None]).ravel()
        else:
            col_sq = [columns[K * units:2 * K * units].reshape(K, units)]
            sq_starts = K * units + member
        parts = [member, sq_starts]
        flags = None
        if relu:
            flags = columns[2 * K * units:].reshape(K, units)
            parts.append(2 * K * units + member)
        counts = np.array(self.sizes[1:], dtype=np.float64) * batch
        totals = np.full((4, K, len(counts)), np.nan)  # alive units: NaN but for ReLU layers
        divisors = np.stack([counts, counts, [*self.sizes[1:-1], 1], np.ones_like(counts)])
        n_out = batch * self.sizes[-1]
        outputs64 = (np.empty((K, n_out)) if self.dtype == np.float32
                     and n_out <= np.getbufsize() else None)
        return _HiddenWork(buf, copy, rows, columns, col_sum, col_sq, flags,
                           np.concatenate(parts), by_layer, relu,
                           [i for i in range(len(rows)) if i not in relu], totals,
                           divisors[:, None, :].astype(np.float64), outputs64)

    def _hidden_stats(self, work: _HiddenWork, sums: Array, sqs: Array, alive: Array) -> bool:
        """:meth:`activation_stats`' hidden layers for two or more of them: per member the
        single network's ``_hidden_stats`` sums into ``sums[:, :-1]`` and ``sqs[:, :-1]``
        (fallbacks per member), the ReLU layers' alive units into ``alive``. Returns True
        when every sum (and sum of squares) is finite as first summed (no fallback needed).

        Its column sums are a BLAS matrix-vector product on its ``(batch, all hidden units)``
        buffer, whose order of summation depends on the matrix's shape and a column's place
        in it: they are that very call per member, on a member-major copy of the work arrays
        in its layout (``work.copy``). Its column sums of squares are ``einsum`` on that
        buffer, whose inner loop runs along the units, each column summed row after row:
        the same per column on the work arrays themselves as long as a layer's units are its
        inner loop too (two or more units), else on the copy. Per-layer sums, then, are
        ``reduceat`` over each member's layer of contiguous columns, as the single network's:
        all of them, and the counts of alive ReLU units, in one call."""
        K, L, acts = self.size, self.n_layers, work.buffers.act
        for dst, src in work.rows:
            np.copyto(dst, src)
        np.matmul(self._ones(self._bs), work.copy, out=work.col_sum)
        if work.by_layer:
            for a, col_sq in zip(acts, work.col_sq, strict=True):
                np.einsum("kij,kij->kj", a, a, out=col_sq)
        else:
            np.einsum("kij,kij->kj", work.copy, work.copy, out=work.col_sq[0])
        if work.flags is not None:  # alive units: column sums > 0 (as in _unit_stats)
            np.greater(work.col_sum, 0, out=work.flags)
        per = np.add.reduceat(work.columns, work.starts)
        n = K * (L - 1)
        sums[:, :-1] = per[:n].reshape(K, L - 1)
        sq = per[n:2 * n]
        sqs[:, :-1] = sq.reshape(L - 1, K).T if work.by_layer else sq.reshape(K, L - 1)
        finite = all_finite(per[:2 * n])
        if not finite:
            self._redo_overflowing(work, sums, sqs)
        if len(work.relu) == L - 1:
            alive[:, :-1] = per[2 * n:].reshape(K, L - 1)
        elif work.relu:
            alive[:, work.relu] = per[2 * n:].reshape(K, L - 1)[:, work.relu]
        return finite

    def _redo_overflowing(self, work: _HiddenWork, sums: Array, sqs: Array) -> None:
        """Redo in float64, from their activations (the copy in the single layout), the
        per-layer sums (``sums[:, :-1]``) of members whose column sums are not all finite,
        and the sums of squares of those whose float32 column sums of squares are not, as the
        single network does (finite columns whose sum overflows stay as they are). Only
        members with a non-finite per-layer figure are looked at: a non-finite column makes
        its layer's sum so."""
        act, starts = work.copy, self._starts
        bad = ~(np.isfinite(sums[:, :-1]).all(axis=1) & np.isfinite(sqs[:, :-1]).all(axis=1))
        for k in np.flatnonzero(bad).tolist():
            if not np.isfinite(work.col_sum[k]).all():
                sums[k, :-1] = np.add.reduceat(act[k].sum(axis=0, dtype=np.float64), starts)
            if act.dtype != np.float64 and not all(np.isfinite(c[k]).all()
                                                   for c in work.col_sq):
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
