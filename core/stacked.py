"""K independent MLPs of one architecture as one stacked computation.

Member ``k``'s parameters are row ``k`` of one ``(K, n_params)`` buffer, in the flat layout of
:class:`core.layout.ParamLayout`; layer ``i``'s weight is the view ``W[i]`` of shape
``(K, fan_in, fan_out)``, its bias ``(K, 1, fan_out)``. A forward pass is one batched
``matmul`` per layer (NumPy calls the same BLAS routine per member as for a single network, so
each member's numbers equal its own network's), the activations are core's own functions
(elementwise, any shape), and the inputs are either shared by all members ``(batch, n_in)``
or per member ``(K, batch, n_in)``.

Members are initialised by :class:`core.network.MLP` itself (one per member, from the member's
generator), so a member starts exactly where its single-network run starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.activations import ActivationFn
from core.layers import (
    BatchNormCache,
    affine_backward_batched,
    affine_forward,
    batchnorm_backward_batched,
    batchnorm_forward_eval,
    batchnorm_forward_train_batched,
)
from core.layout import ParamLayout
from core.network import EVAL_CHUNK, MLP

__all__ = ["StackedMLP", "segment_sumsq_batched"]

Array = np.ndarray
_FEW_ELEMENTS = 64 * 1024
_NON_NEGATIVE = ("relu", "sigmoid")  # activations whose outputs are >= 0 (or NaN)


@dataclass(slots=True)
class _Buffers:
    """Per-batch-size work arrays reused across steps."""

    z: list[Array]  # per layer (K, batch, fan_out): pre-activation (after batch norm)
    act: list[Array]  # per hidden layer (K, batch, units): activations
    dx: list[Array]  # per layer (K, batch, fan_in): gradient w.r.t. the input (layer 0: none)


class StackedMLP:
    """The networks ``networks`` (same sizes, activations, batch norm, dtype) stacked.

    Attributes
    ----------
    flat, grad : ndarray of shape ``(K, n_params)``
        Parameters and gradients of all members; row ``k`` is member ``k``'s flat buffer.
    """

    def __init__(self, networks: list[MLP]) -> None:
        first = networks[0]
        for net in networks[1:]:
            if (net.sizes != first.sizes or net.batch_norm != first.batch_norm
                    or net.dtype != first.dtype
                    or [a.name for a in net.activations] != [a.name for a in first.activations]):
                raise ValueError("stacked networks must share layer sizes, activations, batch "
                                 "norm and dtype")
        self.dtype = first.dtype
        self.sizes = first.sizes
        self.n_layers = first.n_layers
        self.batch_norm = first.batch_norm
        self.activations: list[ActivationFn] = first.activations
        self.layout: ParamLayout = first.layout
        self.flat = np.stack([net.flat for net in networks])
        self.running_mean = {i: np.stack(
            [net.running_mean[i] for net in networks])[:, None, :] for i in first.running_mean}
        self.running_var = {i: np.stack(
            [net.running_var[i] for net in networks])[:, None, :] for i in first.running_var}
        self._bind(self.flat, np.empty_like(self.flat))  # backward writes every slot
        self._ones_rows: dict[tuple[int, np.dtype], Array] = {}

    @property
    def size(self) -> int:
        """Number of members K."""
        return int(self.flat.shape[0])

    def _bind(self, flat: Array, grad: Array) -> None:
        """(Re)build the per-tensor views after the buffers changed."""
        self.flat = flat
        self.grad = grad
        K = self.size
        self.W: list[Array] = []
        self.b: list[Array] = []
        self.dW: list[Array] = []
        self.db: list[Array] = []
        self.gamma: dict[int, Array] = {}
        self.beta: dict[int, Array] = {}
        self.dgamma: dict[int, Array] = {}
        self.dbeta: dict[int, Array] = {}
        for slot in self.layout.slots:
            shape = (K, *slot.shape) if slot.kind == "weight" else (K, 1, *slot.shape)
            p = flat[:, slot.offset:slot.stop].reshape(shape)
            g = self.grad[:, slot.offset:slot.stop].reshape(shape)
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
        self._buffers: dict[int, _Buffers] = {}
        self._inputs: list[Array] = []
        self._bn_cache: dict[int, BatchNormCache] = {}
        self._bs = 0

    def keep_rows(self, rows: Array, flat: Array | None = None) -> None:
        """Keep only members ``rows`` (in that order); ``flat`` is the kept parameter buffer
        when the optimizer already made it (it owns the parameters it updates)."""
        n = len(rows)
        buffers = self._buffers
        self._bind(np.ascontiguousarray(self.flat[rows]) if flat is None else flat,
                   self.grad[:n])
        # the work arrays' leading rows serve the smaller stack (no new large allocation)
        self._buffers = {bs: _Buffers([z[:n] for z in b.z], [a[:n] for a in b.act],
                                      [d[:n] if d.shape[0] else d for d in b.dx])
                         for bs, b in buffers.items()}
        self.running_mean = {i: v[rows] for i, v in self.running_mean.items()}
        self.running_var = {i: v[rows] for i, v in self.running_var.items()}

    def member_parameters(self, k: int) -> list[tuple[str, Array]]:
        """Member ``k``'s ``[(name, live array)]``, as :meth:`core.network.MLP.parameters`."""
        return [(s.name, self.layout.view(self.flat[k], s)) for s in self.layout.slots]

    # ---------------------------------------------------------------- passes
    def _buffers_for(self, batch: int) -> _Buffers:
        buf = self._buffers.get(batch)
        if buf is None:
            if len(self._buffers) > 4:
                self._buffers.clear()
            K, dt = self.size, self.dtype
            z = [np.empty((K, batch, n), dtype=dt) for n in self.sizes[1:]]
            act = [np.empty((K, batch, n), dtype=dt) for n in self.sizes[1:-1]]
            dx = [np.empty((K, batch, n) if i else (0, 0, 0), dtype=dt)
                  for i, n in enumerate(self.sizes[:-1])]
            buf = self._buffers[batch] = _Buffers(z, act, dx)
        return buf

    def hidden_activation(self, i: int) -> Array:
        """Hidden layer ``i``'s activations of the last training pass, ``(K, batch, units)``."""
        return self._buffers[self._bs].act[i]

    def forward(self, X: Array, update_running: bool = True) -> Array:
        """Training-mode forward pass of every member; ``X`` shared ``(batch, n_in)`` or per
        member ``(K, batch, n_in)``. Returns the outputs ``(K, batch, n_out)``."""
        n = X.shape[-2]
        self._bs = n
        buf = self._buffers_for(n)
        inputs = self._inputs = [X]
        x = X
        for i in range(self.n_layers - 1):
            z = affine_forward(x, self.W[i], self.b[i], out=buf.z[i])
            if self.batch_norm[i]:
                z, self._bn_cache[i] = batchnorm_forward_train_batched(
                    z, self.gamma[i], self.beta[i], self.running_mean[i],
                    self.running_var[i], update_running)
                buf.z[i] = z
            x = self.activations[i].forward(z, buf.act[i])
            inputs.append(x)
        return affine_forward(x, self.W[-1], self.b[-1], out=buf.z[-1])

    def backward(self, dout: Array) -> None:
        """Back-propagates ``dout`` ``(K, batch, n_out)`` into ``self.grad``."""
        buf = self._buffers[self._bs]
        inputs, last = self._inputs, self.n_layers - 1
        dz = dout
        for i in range(last, -1, -1):
            if i < last:
                dz = self.activations[i].backward(dz, buf.z[i], inputs[i + 1])
                if self.batch_norm[i]:
                    dz = batchnorm_backward_batched(dz, self.gamma[i], self._bn_cache[i],
                                                    self.dgamma[i], self.dbeta[i])
            outer = i > 0 and dz.shape[-1] == 1
            dx = affine_backward_batched(dz, inputs[i], self.W[i], self.dW[i], self.db[i],
                                         need_dx=i > 0 and not outer, dx_out=buf.dx[i])
            if outer:
                # one output unit: dz @ W.T is an outer product, one rounded multiply per
                # element whatever computes it (the same numbers), ~3x faster than K gemms
                dx = np.multiply(dz, np.swapaxes(self.W[i], -1, -2), out=buf.dx[i])
            if dx is not None:
                dz = dx

    def predict(self, X: Array, rows: Array) -> Array:
        """Inference-mode outputs ``(len(rows), n, n_out)`` of members ``rows`` on ``X``
        (shared ``(n, n_in)``), in the chunks :meth:`core.network.MLP.predict` uses."""
        every = len(rows) == self.size and bool(np.all(rows == np.arange(self.size)))
        W = self.W if every else [w[rows] for w in self.W]  # no copy for the whole stack
        b = self.b if every else [v[rows] for v in self.b]
        outs = [self._predict_chunk(X[s:s + EVAL_CHUNK], W, b, None if every else rows)
                for s in range(0, len(X), EVAL_CHUNK)]
        if not outs:
            return np.empty((len(rows), 0, self.sizes[-1]), dtype=self.dtype)
        return np.concatenate(outs, axis=1)

    def _predict_chunk(self, x: Array, W: list[Array], b: list[Array],
                       rows: Array | None) -> Array:
        for i in range(self.n_layers):
            z = affine_forward(x, W[i], b[i])
            if i == self.n_layers - 1:
                return z
            if self.batch_norm[i]:
                pick = slice(None) if rows is None else rows
                z = batchnorm_forward_eval(z, self.gamma[i][pick], self.beta[i][pick],
                                           self.running_mean[i][pick],
                                           self.running_var[i][pick])
            x = self.activations[i].forward(z, np.empty_like(z))
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- statistics
    def _ones(self, a: Array) -> Array:
        """A ``(1, n)`` row of ones in ``a``'s dtype, ``n`` = ``a.shape[1]`` (cached)."""
        ones = self._ones_rows.get((a.shape[1], a.dtype))
        if ones is None:
            ones = self._ones_rows[(a.shape[1], a.dtype)] = np.ones((1, a.shape[1]), a.dtype)
        return ones

    def activation_stats(self, outputs: Array, out: Array | None = None
                         ) -> tuple[Array, Array, Array, Array]:
        """Per member and layer ``(mean, std, dead_fraction, saturated_fraction)``, each
        ``(K, n_layers)`` float64 (NaN where a statistic does not apply), of the last training
        pass: as :meth:`core.network.MLP.activation_stats` computes them per network.

        ``out`` (``(K, n_layers, 4)`` float64, e.g. a view of the telemetry rows) receives
        them in place; the four returned arrays are then its columns."""
        K, L = self.size, self.n_layers
        if out is None:
            out = np.empty((K, L, 4))
        out[:, :, 2:] = np.nan
        sums = np.empty((K, L))
        sqs = np.empty((K, L))
        counts = np.empty(L)
        layers = [*(self.hidden_activation(i) for i in range(L - 1)), outputs]
        for i, a in enumerate(layers):
            rows = a.reshape(K, -1)
            counts[i] = rows.shape[1]
            if i < L - 1 and self.activations[i].name in _NON_NEGATIVE:
                # one matrix-vector product for every member's sum (as the single network's
                # column sums; no cancellation in a sum of non-negative outputs), the float64
                # sum where the training dtype overflowed
                s = rows @ self._ones(rows)[0]
                if np.isfinite(s).all():
                    sums[:, i] = s
                else:
                    rows.sum(axis=1, dtype=np.float64, out=sums[:, i])
            else:
                rows.sum(axis=1, dtype=np.float64, out=sums[:, i])
            q = np.einsum("ki,ki->k", rows, rows)
            if rows.dtype != np.float64 and not np.isfinite(q).all():
                r64 = rows.astype(np.float64)
                q = np.einsum("ki,ki->k", r64, r64)
            sqs[:, i] = q
            if i == L - 1:
                break
            act_fn = self.activations[i]
            units = a.shape[2]
            if act_fn.name == "relu":
                # a unit is alive when its output is > 0 for some example: for outputs >= 0
                # (or NaN), exactly when their column sum is > 0, which one batched matmul
                # gives far faster than a reduction over the middle axis
                alive = (np.matmul(self._ones(a), a)[:, 0, :] > 0).sum(axis=1)
                out[:, i, 2] = 1.0 - alive / units
            elif act_fn.family == "relu":
                alive = (a.max(axis=1) > 0).sum(axis=1)
                out[:, i, 2] = 1.0 - alive / units
            elif act_fn.name in ("tanh", "sigmoid"):
                in_tail = np.abs(a - act_fn.saturation_center) > act_fn.saturation_halfwidth
                out[:, i, 3] = in_tail.reshape(K, -1).sum(axis=1) / rows.shape[1]
        # every layer's mean and std at once (elementwise: the numbers of a layer at a time)
        m = np.divide(sums, counts, out=out[:, :, 0])
        spread = np.sqrt(np.maximum(sqs / counts - m * m, 0.0))
        out[:, :, 1] = np.where(np.isfinite(sqs), spread, sqs)
        return out[:, :, 0], out[:, :, 1], out[:, :, 2], out[:, :, 3]


def segment_sumsq_batched(flat: Array, bounds: Array) -> Array:
    """Sum of squares of ``flat[:, bounds[j]:bounds[j + 1]]`` per row and segment,
    ``(K, len(bounds) - 1)`` float64; float32 sums that overflow are redone in float64 (for
    the rows concerned only)."""
    K, n_seg = flat.shape[0], len(bounds) - 1
    if flat.shape[1] <= _FEW_ELEMENTS:
        out = np.add.reduceat(np.square(flat), bounds[:-1], axis=1).astype(np.float64)
        if flat.dtype != np.float64 and not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
            out[bad] = np.add.reduceat(np.square(flat[bad], dtype=np.float64), bounds[:-1],
                                       axis=1)
        return out
    out = np.empty((K, n_seg))
    for j in range(n_seg):
        seg = flat[:, int(bounds[j]):int(bounds[j + 1])]
        s = np.einsum("kp,kp->k", seg, seg)
        out[:, j] = s
        if flat.dtype != np.float64 and not np.isfinite(s).all():
            bad = np.flatnonzero(~np.isfinite(s))
            s64 = seg[bad].astype(np.float64)
            out[bad, j] = np.einsum("kp,kp->k", s64, s64)
    return out
