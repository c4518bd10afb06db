"""The multi-layer perceptron: parameters in one flat buffer, forward and backward passes.

Layer ``i`` computes ``z = x @ W_i + b_i``; hidden layers then apply batch norm (if asked)
and their activation; the output layer is linear (the loss owns softmax/sigmoid). All hidden
activations of a batch live side by side in one ``(batch, total_hidden_units)`` buffer so that
per-layer activation statistics cost a few NumPy calls for the whole network.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from core.activations import ActivationFn, get_activation
from core.initializers import init_bias, init_weight
from core.layers import (
    BatchNormCache,
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward_eval,
    batchnorm_forward_train,
)
from core.layout import ParamLayout, sumsq
from core.spec import TrainingSpec

__all__ = ["MLP", "draw_parameters"]

Array = np.ndarray
EVAL_CHUNK = 4096


@dataclass(slots=True)
class _Buffers:
    """Per-batch-size work arrays reused across steps."""

    act: Array  # (batch, total hidden units): all hidden activations
    act_views: list[Array]  # each hidden layer's columns of ``act``
    ones: Array  # (batch,) of ones: column sums as a matrix-vector product
    z: list[Array]  # per layer pre-activation (after batch norm for hidden layers)
    dx: list[Array]  # per layer gradient w.r.t. its input (layer 0 needs none)


def draw_parameters(spec: TrainingSpec, rng: np.random.Generator, layout: ParamLayout,
                    sizes: list[int], batch_norm: list[bool], flat: Array) -> None:
    """Draw the initial parameters of ``spec``'s network from ``rng`` into ``flat`` (zeros, in
    ``layout``): each layer's weights then biases in layer order, batch-norm scales at 1. The
    one place that order lives: :class:`MLP` and the stacked trainer's members
    (:func:`core.stacked.initial_parameters`) draw through it, so a member's numbers and its
    generator's state are its single run's."""
    hidden = spec.model.hidden
    slots = {(s.layer, s.kind): s for s in layout.slots}
    for i in range(len(sizes) - 1):
        init = (hidden[i].init if i < len(hidden) else None) or spec.model.init
        act_name = hidden[i].activation if i < len(hidden) else "linear"
        layout.view(flat, slots[(i, "weight")])[...] = init_weight(
            init, sizes[i], sizes[i + 1], act_name, rng, flat.dtype)
        layout.view(flat, slots[(i, "bias")])[...] = init_bias(init, sizes[i + 1], flat.dtype)
        if batch_norm[i]:
            layout.view(flat, slots[(i, "bn_gamma")])[...] = 1


class MLP:
    """An MLP built from a :class:`~core.spec.TrainingSpec`, initialised from ``rng``."""

    def __init__(self, spec: TrainingSpec, rng: np.random.Generator) -> None:
        self.dtype = np.dtype(spec.dtype)
        self.sizes = spec.layer_sizes()
        hidden = spec.model.hidden
        self.n_layers = len(self.sizes) - 1
        self.batch_norm = [h.batch_norm for h in hidden] + [False]
        self.activations: list[ActivationFn] = [get_activation(h.activation) for h in hidden]
        self.layout = ParamLayout.for_mlp(self.sizes, self.batch_norm[:-1])
        self.flat = np.zeros(self.layout.size, dtype=self.dtype)
        self.grad = np.zeros(self.layout.size, dtype=self.dtype)
        self.W: list[Array] = []
        self.b: list[Array] = []
        self.dW: list[Array] = []
        self.db: list[Array] = []
        self.gamma: dict[int, Array] = {}
        self.beta: dict[int, Array] = {}
        self.dgamma: dict[int, Array] = {}
        self.dbeta: dict[int, Array] = {}
        self.running_mean: dict[int, Array] = {}
        self.running_var: dict[int, Array] = {}
        for slot in self.layout.slots:
            p, g = self.layout.view(self.flat, slot), self.layout.view(self.grad, slot)
            if slot.kind == "weight":
                self.W.append(p)
                self.dW.append(g)
            elif slot.kind == "bias":
                self.b.append(p)
                self.db.append(g)
            elif slot.kind == "bn_gamma":
                self.gamma[slot.layer], self.dgamma[slot.layer] = p, g
            else:
                self.beta[slot.layer], self.dbeta[slot.layer] = p, g
        draw_parameters(spec, rng, self.layout, self.sizes, self.batch_norm, self.flat)
        for i in range(self.n_layers):
            if self.batch_norm[i]:
                self.running_mean[i] = np.zeros(self.sizes[i + 1], dtype=self.dtype)
                self.running_var[i] = np.ones(self.sizes[i + 1], dtype=self.dtype)
        # Column ranges of each hidden layer inside the activation buffer.
        self.col_offsets = np.concatenate([[0], np.cumsum(self.sizes[1:-1])]).astype(np.int64)
        self._buffers: dict[int, _Buffers] = {}
        self._inputs: list[Array] = []
        self._bn_cache: dict[int, BatchNormCache] = {}
        self._bs = 0
        self._starts = self.col_offsets[:-1]
        self._counts = [h.units for h in hidden]
        self._count_array = np.array(self._counts, dtype=np.float64)
        self._scratch: dict[tuple[int, ...], Array] = {}  # saturation masks, per batch shape
        self._relu_layers = [i for i, a in enumerate(self.activations) if a.family == "relu"]
        self._tanh_layers = [i for i, a in enumerate(self.activations) if a.name == "tanh"]
        self._sigmoid_layers = [i for i, a in enumerate(self.activations) if a.name == "sigmoid"]

    # ---------------------------------------------------------------- parameters
    def parameters(self) -> list[tuple[str, Array]]:
        """``[(name, live array)]`` in layer order (weight, bias, bn_gamma, bn_beta)."""
        return [(s.name, self.layout.view(self.flat, s)) for s in self.layout.slots]

    def gradient_views(self) -> list[Array]:
        """Gradient arrays aligned with :meth:`parameters` (live views of ``self.grad``)."""
        return self.layout.views(self.grad)

    # ---------------------------------------------------------------- passes
    def _buffers_for(self, batch: int) -> _Buffers:
        buf = self._buffers.get(batch)
        if buf is None:
            if len(self._buffers) > 4:
                self._buffers.clear()
            act = np.empty((batch, int(self.col_offsets[-1])), dtype=self.dtype)
            z = [np.empty((batch, n), dtype=self.dtype) for n in self.sizes[1:]]
            views = [act[:, int(a):int(b)] for a, b in itertools.pairwise(self.col_offsets)]
            dx = [np.empty((batch, n) if i else (0, 0), dtype=self.dtype)
                  for i, n in enumerate(self.sizes[:-1])]
            buf = self._buffers[batch] = _Buffers(act, views, np.ones(batch, self.dtype), z, dx)
        return buf

    def hidden_activation(self, i: int) -> Array:
        """Layer ``i``'s activations from the last training forward pass, ``(batch, units)``."""
        return self._buffers[self._bs].act_views[i]

    def forward(self, X: Array, update_running: bool = True) -> Array:
        """Training-mode forward pass; keeps what :meth:`backward` needs. Returns the outputs.

        Overflow produces Inf/NaN silently only under ``np.errstate(all="ignore")``, which the
        trainer sets once per run (per-call errstate would cost more than a small layer).
        """
        n = X.shape[0]
        self._bs = n
        buf = self._buffers_for(n)
        inputs = self._inputs = [X]
        x = X
        W, b, zs, acts, views = self.W, self.b, buf.z, self.activations, buf.act_views
        for i in range(self.n_layers - 1):
            z = affine_forward(x, W[i], b[i], out=zs[i])
            if self.batch_norm[i]:
                z, self._bn_cache[i] = batchnorm_forward_train(
                    z, self.gamma[i], self.beta[i], self.running_mean[i],
                    self.running_var[i], update_running)
                zs[i] = z
            x = acts[i].forward(z, views[i])
            inputs.append(x)
        return affine_forward(x, W[-1], b[-1], out=zs[-1])

    def backward(self, dout: Array) -> None:
        """Back-propagates ``dout`` (gradient w.r.t. the outputs) into ``self.grad``."""
        buf = self._buffers[self._bs]
        inputs, zs, dxs, acts = self._inputs, buf.z, buf.dx, self.activations
        W, dW, db = self.W, self.dW, self.db
        last = self.n_layers - 1
        dz = dout
        for i in range(last, -1, -1):
            if i < last:
                dz = acts[i].backward(dz, zs[i], inputs[i + 1])
                if self.batch_norm[i]:
                    dz = batchnorm_backward(dz, self.gamma[i], self._bn_cache[i],
                                            self.dgamma[i], self.dbeta[i])
            dx = affine_backward(dz, inputs[i], W[i], dW[i], db[i], need_dx=i > 0,
                                 dx_out=dxs[i])
            if dx is not None:
                dz = dx

    def predict(self, X: Array) -> Array:
        """Inference-mode outputs (batch norm uses running statistics), in chunks."""
        outs = [self._predict_chunk(X[s:s + EVAL_CHUNK]) for s in range(0, len(X), EVAL_CHUNK)]
        if not outs:
            return np.empty((0, self.sizes[-1]), dtype=self.dtype)
        return np.concatenate(outs)

    def _predict_chunk(self, x: Array) -> Array:
        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(self.n_layers):
                z = affine_forward(x, self.W[i], self.b[i])
                if i == self.n_layers - 1:
                    return z
                if self.batch_norm[i]:
                    z = batchnorm_forward_eval(z, self.gamma[i], self.beta[i],
                                               self.running_mean[i], self.running_var[i])
                x = self.activations[i].forward(z, np.empty_like(z))
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- statistics
    def activation_stats(self, outputs: Array) -> tuple[list[float], list[float],
                                                          list[float | None],
                                                          list[float | None]]:
        """Per-layer ``(mean, std, dead_fraction, saturated_fraction)`` of the last training
        forward pass: hidden layers, then the outputs; None where a statistic does not apply
        (:meth:`activation_stat_array` as lists)."""
        table = self.activation_stat_array(outputs)
        mask = self.activation_stat_mask()
        cols = [[v if m else None for v, m in zip(table[:, k].tolist(), mask[:, k].tolist(),
                                                   strict=True)] for k in range(4)]
        return cols[0], cols[1], cols[2], cols[3]  # type: ignore[return-value]

    def activation_stat_mask(self) -> Array:
        """``(n_layers, 4)`` bool: which of (mean, std, dead, saturated) apply to each layer."""
        mask = np.zeros((self.n_layers, 4), dtype=bool)
        mask[:, :2] = True
        mask[self._relu_layers, 2] = True
        mask[self._tanh_layers + self._sigmoid_layers, 3] = True
        return mask

    def activation_stat_array(self, outputs: Array, out: Array | None = None) -> Array:
        """``(n_layers, 4)`` float64: per layer (mean, std, dead_fraction,
        saturated_fraction) of the last training forward pass, hidden layers then the outputs;
        NaN where a statistic does not apply (:meth:`activation_stat_mask`). With ``out``
        (e.g. a view of a telemetry row whose absent entries are already NaN) only the
        statistics that apply are written, into it.

        A fixed handful of whole-buffer NumPy calls whatever the depth: column sums and sums
        of squares of the activation buffer, reduced per layer with ``reduceat``.
        """
        L = self.n_layers
        table = np.full((L, 4), np.nan) if out is None else out
        if L == 2:  # one hidden layer: whole-buffer sums, scalar arithmetic
            act = self._buffers[self._bs].act
            c = self._counts[0] * act.shape[0]
            m0 = float(act.sum(dtype=np.float64)) / c
            q0 = sumsq(act.reshape(-1))
            table[0, 0] = m0
            table[0, 1] = math.sqrt(max(q0 / c - m0 * m0, 0.0)) if math.isfinite(q0) else q0
            if self._relu_layers:  # dead: output <= 0 for every example of the batch
                table[0, 2] = 1.0 - int(np.count_nonzero(act.max(axis=0) > 0)) / self._counts[0]
            self._saturation(table)
        elif L > 2:
            self._hidden_stats(table)
        flat_out = outputs.reshape(-1)
        k = flat_out.size
        m = float(flat_out.sum(dtype=np.float64)) / k
        q_out = sumsq(flat_out) / k
        table[-1, 0] = m
        table[-1, 1] = math.sqrt(max(q_out - m * m, 0.0)) if math.isfinite(q_out) else q_out
        return table

    def _hidden_stats(self, table: Array) -> None:
        """:meth:`activation_stat_array`'s hidden rows for two or more hidden layers."""
        act, ones = self._buffers[self._bs].act, self._buffers[self._bs].ones
        # Column sums as a BLAS matrix-vector product (much faster than a strided
        # reduction), then per-layer sums with reduceat.
        col_sq = np.einsum("ij,ij->j", act, act)
        if col_sq.dtype != np.float64 and not np.isfinite(col_sq).all():
            a64 = act.astype(np.float64)  # float32 overflow of the squares
            col_sq = np.einsum("ij,ij->j", a64, a64)
        col_sum = ones @ act
        if not np.isfinite(col_sum).all():
            col_sum = act.sum(axis=0, dtype=np.float64)
        sums = np.add.reduceat(col_sum, self._starts).astype(np.float64)
        sqs = np.add.reduceat(col_sq, self._starts).astype(np.float64)
        cn = self._count_array * act.shape[0]
        mean = sums / cn
        table[:-1, 0] = mean
        with np.errstate(invalid="ignore"):
            spread = np.sqrt(np.maximum(sqs / cn - mean * mean, 0.0))
        table[:-1, 1] = np.where(np.isfinite(sqs), spread, sqs)
        if self._relu_layers:
            # a unit is dead on this batch when its output is <= 0 for every example
            alive = np.add.reduceat(act.max(axis=0) > 0, self._starts)
            rl = self._relu_layers
            table[rl, 2] = 1.0 - alive[rl] / self._count_array[rl]
        self._saturation(table)

    def _saturation(self, table: Array) -> None:
        """Saturated fractions of the tanh and sigmoid hidden layers into ``table[:, 3]``."""
        act, ones = self._buffers[self._bs].act, self._buffers[self._bs].ones
        for layers, center, half in ((self._tanh_layers, 0.0, 0.99),
                                     (self._sigmoid_layers, 0.5, 0.49)):
            if layers:
                # |a - center| > half as 1.0 / 0.0 in two passes over reused scratch buffers
                scratch = self._scratch.get(act.shape)
                if scratch is None:
                    scratch = self._scratch[act.shape] = np.empty_like(act)
                if center:
                    np.subtract(act, center, out=scratch)
                    np.abs(scratch, out=scratch)
                else:
                    np.abs(act, out=scratch)
                in_tail = np.greater(scratch, half, out=scratch, casting="unsafe")
                cnt = np.add.reduceat(ones @ in_tail, self._starts).astype(np.float64)
                table[layers, 3] = cnt[layers] / (self._count_array[layers] * act.shape[0])
