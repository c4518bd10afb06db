"""K independent MLPs of one architecture as one stacked computation.

Member ``k``'s parameters are row ``k`` of one ``(K, n_params)`` buffer, in the flat layout of
:class:`core.layout.ParamLayout`; layer ``i``'s weight is the view ``W[i]`` of shape
``(K, fan_in, fan_out)``, its bias ``(K, 1, fan_out)``. A forward pass is one batched
``matmul`` per layer (NumPy calls the same BLAS routine per member as for a single network, so
each member's numbers equal its own network's), the activations are core's own functions
(elementwise, any shape), and the inputs are either shared by all members ``(batch, n_in)``
or per member ``(K, batch, n_in)``.

Members are initialised by :class:`core.network.MLP` itself (one per member, from the member's
generator), so a member starts exactly where its single-network run starts. The per-member
activation statistics of the last training pass are :mod:`core.stack_activations`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.activations import ActivationFn
from core.layers import (
    BatchNormCache,
    affine_forward,
    batchnorm_backward_batched,
    batchnorm_forward_eval,
    batchnorm_forward_train_batched,
)
from core.layout import ParamLayout
from core.network import EVAL_CHUNK, MLP, draw_parameters
from core.spec import TrainingSpec
from core.stack_activations import ActivationStats
from core.stack_buffers import Buffers, Storage, members_view, work_array
from core.stack_sums import segment_sumsq_batched

__all__ = ["StackedMLP", "initial_parameters", "segment_sumsq_batched"]

Array = np.ndarray
_PREDICT_CACHE = 8 * 1024 * 1024  # elements of inference work arrays kept between calls
_PREDICT_GROUP = 512 * 1024  # bytes of one hidden layer's inference work array per group


def initial_parameters(spec: TrainingSpec, rng: np.random.Generator, like: MLP,
                       out: Array) -> None:
    """The initial parameters :class:`core.network.MLP` draws for ``spec`` from ``rng`` (the
    same calls in the same order: the same numbers and the same generator state after), into
    ``out`` (flat, in the layout of ``like``, a network of the same architecture): without
    building a whole network per member."""
    out[...] = 0
    draw_parameters(spec, rng, like.layout, like.sizes, like.batch_norm, out)


class StackedMLP(ActivationStats):
    """The networks ``networks`` (same sizes, activations, batch norm, dtype) stacked.

    Attributes
    ----------
    flat, grad : ndarray of shape ``(K, n_params)``
        Parameters and gradients of all members; row ``k`` is member ``k``'s flat buffer.
    """

    def __init__(self, networks: list[MLP], flat: Array | None = None) -> None:
        """``flat`` (``(K, n_params)``): the members' parameters when ``networks`` is only
        their architecture (one network, e.g. the first member's; every member's batch-norm
        running statistics then are a new network's, as those of networks just built)."""
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
        if flat is None:
            self.flat = np.stack([net.flat for net in networks])
            self.running_mean = {i: np.stack([net.running_mean[i] for net in networks])[
                :, None, :] for i in first.running_mean}
            self.running_var = {i: np.stack([net.running_var[i] for net in networks])[
                :, None, :] for i in first.running_var}
        else:
            if len(networks) != 1 or flat.shape[1:] != first.flat.shape or flat.dtype != self.dtype:
                raise ValueError("parameters for one architecture: one network and a "
                                 "(members, n_params) buffer of its dtype")
            K = flat.shape[0]
            self.flat = flat
            self.running_mean = {i: np.zeros((K, 1, v.shape[0]), dtype=v.dtype)
                                 for i, v in first.running_mean.items()}
            self.running_var = {i: np.ones((K, 1, v.shape[0]), dtype=v.dtype)
                                for i, v in first.running_var.items()}
        self._bind(self.flat, np.empty_like(self.flat))  # backward writes every slot
        self._ones_rows: dict[tuple[int, np.dtype], Array] = {}
        # column ranges of each hidden layer in the single network's activation buffer
        self._col_offsets = [int(c) for c in first.col_offsets]
        self._starts = first.col_offsets[:-1]

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
        old = [*getattr(self, "_buffers", {}).values(),
               *getattr(self, "_predict_buffers", {}).values()]
        self._pool: list[Array] = [a for b in old if b is not None for a in b.storage]
        self._buffers: dict[int, Buffers] = {}
        self._inputs: list[Array] = []
        self._bn_cache: dict[int, BatchNormCache] = {}
        self._bs = 0
        self._contiguous_acts: list[Array | None] = []
        self._act_copies: dict[tuple[int, int], Array] = {}
        self._predict_buffers: dict[tuple[int, int], Buffers] = {}

    def keep_rows(self, rows: Array, flat: Array | None = None) -> None:
        """Keep only members ``rows`` (in that order); ``flat`` is the kept parameter buffer
        when the optimizer already made it (it owns the parameters it updates)."""
        self._bind(np.ascontiguousarray(self.flat[rows]) if flat is None else flat,
                   self.grad[:len(rows)])
        self.running_mean = {i: v[rows] for i, v in self.running_mean.items()}
        self.running_var = {i: v[rows] for i, v in self.running_var.items()}

    def member_parameters(self, k: int) -> list[tuple[str, Array]]:
        """Member ``k``'s ``[(name, live array)]``, as :meth:`core.network.MLP.parameters`."""
        return [(s.name, self.layout.view(self.flat[k], s)) for s in self.layout.slots]

    # ---------------------------------------------------------------- passes
    def _buffers_for(self, batch: int) -> Buffers:
        buf = self._buffers.get(batch)
        if buf is None:
            if len(self._buffers) > 4:
                self._buffers.clear()
            buf = self._buffers[batch] = self._new_buffers(batch, self.size)
        return buf

    def _new_buffers(self, batch: int, K: int, backward: bool = True) -> Buffers:
        dt, hidden = self.dtype, self.sizes[1:-1]
        store = Storage(self._pool)
        # Which layout gives each member exactly its single network's numbers. The single
        # network sums a one-unit gradient pairwise (member-major here, whose reduction does
        # the same). BLAS's matrix-vector products (into one unit, or from one input unit)
        # differ in the last bit between a contiguous and a strided matrix: the single
        # network's activations are strided columns of one (batch, all hidden units) array in
        # training with 2+ hidden layers, contiguous otherwise; its gradients contiguous.
        sizes = self.sizes
        strided = backward and len(hidden) > 1  # the single network's activations
        major = [n > 1 and (strided or sizes[i + 2] > 1)
                 and not (backward and i > 0 and sizes[i] == 1)
                 for i, n in enumerate(hidden)]
        zs = [work_array(store, K, batch, n, dt, bm, strided)
              for n, bm in zip(hidden, major, strict=True)]
        # ReLU runs in place: its backward needs only where z > 0, which is exactly where its
        # output a = max(z, 0) is > 0 (a NaN z gives a NaN a: False in both); one work array
        # less per layer to keep in cache
        acts = [z if act.name == "relu" else work_array(store, K, batch, n, dt, bm, strided)
                for n, bm, z, act in zip(hidden, major, zs, self.activations, strict=True)]
        dxs = [work_array(store, K, batch, n, dt, bm, strided and bm)
               for n, bm in zip(hidden, major, strict=True)] if backward else []
        vec = [np.zeros(z2.shape[1] if z2 is not None else K * n, dtype=dt)
               for (_, z2), n in zip(zs, hidden, strict=True)]
        no_dx: list[Array | None] = [None]
        out = store.take((K, batch, self.sizes[-1]), dt)
        self._pool = store.pool
        return Buffers(
            [z for z, _ in zs] + [out],
            [a for a, _ in acts], [np.empty((0, 0, 0), dtype=dt)] + [d for d, _ in dxs],
            [z2 for _, z2 in zs], [a2 for _, a2 in acts], no_dx + [d2 for _, d2 in dxs],
            vec, [v[:K * n].reshape(K, n) for v, n in zip(vec, hidden, strict=True)],
            store.used)

    def hidden_activation(self, i: int) -> Array:
        """Hidden layer ``i``'s activations of the last training pass, ``(K, batch, units)``
        C-contiguous (a copy of the batch-major work array, made once per pass: with one
        hidden layer the per-member statistics read each member's block as one row)."""
        acts = self._contiguous_acts
        a = acts[i]
        if a is None:
            a = self._buffers[self._bs].act[i]
            if not a.flags.c_contiguous:
                copy = self._act_copies.get((self._bs, i))
                if copy is None:
                    copy = self._act_copies[(self._bs, i)] = np.empty(a.shape, a.dtype)
                np.copyto(copy, a)
                a = copy
            acts[i] = a
        return a

    def _hidden(self, x: Array, i: int, buf: Buffers, W: Array, b: Array,
                batch_norm: Callable[[Array], Array] | None) -> Array:
        """Hidden layer ``i`` on ``x`` into ``buf``: ``act(norm(x @ W + b))``; returns the
        activations ``(K, batch, units)``."""
        z, z2, act2 = buf.z[i], buf.z2[i], buf.act2[i]
        np.matmul(x, W, out=z)
        if z2 is None:
            z += b
        else:  # the bias as one batch-major row (its padding stays 0): contiguous rows
            np.copyto(buf.vec3[i], b[:, 0, :])
            np.add(z2, buf.vec[i], out=z2)
        if batch_norm is not None:
            np.copyto(z, batch_norm(z))
        if z2 is None or act2 is None:
            self.activations[i].forward(z, buf.act[i])
        else:
            self.activations[i].forward(z2, act2)
        return buf.act[i]

    def forward(self, X: Array, update_running: bool = True) -> Array:
        """Training-mode forward pass of every member; ``X`` shared ``(batch, n_in)`` or per
        member ``(K, batch, n_in)``. Returns the outputs ``(K, batch, n_out)``."""
        n = X.shape[-2]
        self._bs = n
        buf = self._buffers_for(n)
        inputs = self._inputs = [X]
        self._contiguous_acts = [None] * (self.n_layers - 1)
        x = X
        for i in range(self.n_layers - 1):
            bn = None
            if self.batch_norm[i]:
                def bn(z: Array, i: int = i) -> Array:
                    y, self._bn_cache[i] = batchnorm_forward_train_batched(
                        z, self.gamma[i], self.beta[i], self.running_mean[i],
                        self.running_var[i], update_running)
                    return y
            x = self._hidden(x, i, buf, self.W[i], self.b[i], bn)
            inputs.append(x)
        return affine_forward(x, self.W[-1], self.b[-1], out=buf.z[-1])

    def backward(self, dout: Array) -> None:
        """Back-propagates ``dout`` ``(K, batch, n_out)`` into ``self.grad``."""
        buf = self._buffers[self._bs]
        inputs, last, K = self._inputs, self.n_layers - 1, self.size
        dz, dz2 = dout, None  # the gradient, and its whole batch-major array (or None)
        for i in range(last, -1, -1):
            if i < last:
                z2, act2 = buf.z2[i], buf.act2[i]
                if dz2 is not None and z2 is not None and act2 is not None:
                    dz2 = self.activations[i].backward(dz2, z2, act2)
                    dz = members_view(dz2, K, dz.shape[2])
                else:
                    dz = self.activations[i].backward(dz, buf.z[i], inputs[i + 1])
                if self.batch_norm[i]:
                    dz = batchnorm_backward_batched(dz, self.gamma[i], self._bn_cache[i],
                                                    self.dgamma[i], self.dbeta[i])
                    dz2 = None
            x = inputs[i]
            np.matmul(x.swapaxes(-1, -2), dz, out=self.dW[i])
            if dz2 is None:
                np.add.reduce(dz, axis=1, out=self.db[i][:, 0, :])
            else:
                np.add.reduce(dz2, axis=0, out=buf.vec[i])
                np.copyto(self.db[i][:, 0, :], buf.vec3[i])
            if i == 0:
                break
            if dz.shape[-1] == 1:
                # one output unit: dz @ W.T is an outer product, one rounded multiply per
                # element whatever computes it (the same numbers), ~3x faster than K gemms
                self._outer(dz, self.W[i], buf.dx[i], buf.dx2[i])
            else:
                np.matmul(dz, self.W[i].swapaxes(1, 2), out=buf.dx[i])
            dz, dz2 = buf.dx[i], buf.dx2[i]

    @staticmethod
    def _outer(dz: Array, W: Array, dx: Array, dx2: Array | None) -> None:
        """``dx = dz * W.T``: ``dz`` ``(K, batch, 1)``, ``W`` ``(K, units, 1)``. Into a
        batch-major ``dx`` as ``(batch, K*units)`` rows: each example's gradient repeated
        ``units`` times times the contiguous weights (one pass with long rows instead of
        ``K*batch`` rows of ``units``); the same products."""
        if dx2 is None:
            np.multiply(dz, W.swapaxes(1, 2), out=dx)
            return
        K, _, units = dx.shape
        rows = np.repeat(np.ascontiguousarray(dz[:, :, 0].T), units, axis=1)
        np.multiply(rows, np.ascontiguousarray(W[:, :, 0]).reshape(-1),
                    out=dx2[:, :K * units])

    def predict(self, X: Array, rows: Array) -> Array:
        """Inference-mode outputs ``(len(rows), n, n_out)`` of members ``rows`` on ``X``
        (shared ``(n, n_in)``), in the chunks :meth:`core.network.MLP.predict` uses.

        Members go through in groups whose work arrays stay cache-sized (each member's
        products are BLAS calls of their own: the same numbers in any group)."""
        every = len(rows) == self.size and bool(np.all(rows == np.arange(self.size)))
        n_out = self.sizes[-1]
        out = np.empty((len(rows), len(X), n_out), dtype=self.dtype)
        if not len(X) or not len(rows):
            return out
        per_member = min(len(X), EVAL_CHUNK) * max(self.sizes[1:-1], default=1)
        group = max(1, _PREDICT_GROUP // (per_member * self.dtype.itemsize))
        for k0 in range(0, len(rows), group):
            k1 = min(k0 + group, len(rows))
            pick: slice | Array = slice(k0, k1) if every else rows[k0:k1]
            W = [w[pick] for w in self.W]  # views for a slice, copies of the group otherwise
            b = [v[pick] for v in self.b]
            for s in range(0, len(X), EVAL_CHUNK):
                out[k0:k1, s:s + EVAL_CHUNK] = self._predict_chunk(
                    X[s:s + EVAL_CHUNK], W, b, pick)
        return out

    def _predict_chunk(self, x: Array, W: list[Array], b: list[Array],
                       pick: slice | Array) -> Array:
        K, n = W[0].shape[0], x.shape[0]
        buf = self._predict_buffers.get((n, K))
        if buf is None:
            buf = self._new_buffers(n, K, backward=False)
            if 2 * n * K * sum(self.sizes[1:-1]) <= _PREDICT_CACHE:  # kept for the next epoch
                if len(self._predict_buffers) > 1:  # a group size and the last group's
                    self._predict_buffers.clear()
                self._predict_buffers[(n, K)] = buf
        for i in range(self.n_layers - 1):
            bn = None
            if self.batch_norm[i]:
                def bn(z: Array, i: int = i) -> Array:
                    return batchnorm_forward_eval(z, self.gamma[i][pick], self.beta[i][pick],
                                                  self.running_mean[i][pick],
                                                  self.running_var[i][pick])
            x = self._hidden(x, i, buf, W[i], b[i], bn)
        return affine_forward(x, W[-1], b[-1], out=buf.z[-1])
