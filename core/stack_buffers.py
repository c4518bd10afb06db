"""The stacked network's work arrays: member-major or batch-major, carved from a pool.

A hidden layer's work arrays are batch-major when that makes its elementwise work one
contiguous pass (see :func:`work_array`); each member's block stays a BLAS matrix, so the
batched ``matmul`` calls the same routine per member as the member's own network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Buffers", "Storage", "members_view", "work_array"]

Array = np.ndarray


@dataclass(slots=True)
class Buffers:
    """Per-batch-size work arrays reused across steps (see :func:`work_array`)."""

    z: list[Array]  # per layer (K, batch, fan_out): pre-activation (after batch norm)
    act: list[Array]  # per hidden layer (K, batch, units): activations
    dx: list[Array]  # per layer (K, batch, fan_in): gradient w.r.t. the input (layer 0: none)
    z2: list[Array | None]  # per hidden layer: the whole batch-major array of z (or None)
    act2: list[Array | None]  # the same for act
    dx2: list[Array | None]  # the same for dx (per layer, as dx)
    vec: list[Array]  # per hidden layer: a batch-major row (bias, then bias gradient)
    vec3: list[Array]  # its (K, units) view
    storage: list[Array]  # the flat arrays behind the work arrays


def _row_length(n: int, itemsize: int, strided: bool) -> int:
    """Elements per row of a batch-major array holding ``n``: ``n``, padded to an odd number
    of 64-byte lines when it is a whole even number of them (rows a power of two apart fall on
    the same L1 sets, which makes BLAS ~2x slower on a member's strided block), and padded
    anyway when ``strided`` asks for rows longer than ``n``."""
    if (n * itemsize) % 128 == 0 or strided:
        return n + max(1, 64 // itemsize)
    return n


class Storage:
    """Where work arrays come from: the flat arrays a larger stack used (best fit, each at
    most once; their contents are garbage, every work array is written before it is read),
    else new ones. A shrinking stack then needs no new large allocation."""

    def __init__(self, pool: list[Array]) -> None:
        self.pool = sorted(pool, key=lambda a: a.size)
        self.used: list[Array] = []

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        n = math.prod(shape)
        for j, a in enumerate(self.pool):
            if a.size >= n and a.dtype == dtype:
                flat = self.pool.pop(j)
                break
        else:
            flat = np.zeros(n, dtype=dtype)
        self.used.append(flat)
        return flat[:n].reshape(shape)


def work_array(store: Storage, K: int, batch: int, units: int, dtype: np.dtype,
                batch_major: bool, strided: bool = False) -> tuple[Array, Array | None]:
    """A ``(K, batch, units)`` work array and, when batch-major, the whole array.

    Batch-major: one C-contiguous ``(batch, row)`` array whose row holds every member's
    ``units`` side by side (then a few padding elements, see :func:`_row_length`); member
    ``k`` is the strided ``(batch, units)`` block at column ``k*units``. The ``(K, batch,
    units)`` view feeds the batched ``matmul`` (each member is still a BLAS matrix, with a
    larger leading dimension: the same routine, the same numbers), the whole array the
    elementwise work (bias add, activations: one contiguous pass instead of ``K*batch`` rows
    of ``units``; NumPy is ~2.5x slower on row-strided arrays, hence the padding is computed
    along) and the bias gradient (a sum over axis 0: row after row, the order of the single
    network's ``np.add.reduce(dz, axis=0)`` over ``(batch, units)``).

    Member-major ``(K, batch, units)`` otherwise; ``strided`` makes each member's block
    strided all the same (no whole array then).
    """
    itemsize = np.dtype(dtype).itemsize
    if not batch_major and not strided:
        return store.take((K, batch, units), dtype), None
    n = K * units
    whole = store.take((batch, _row_length(n, itemsize, strided and n == units)), dtype)
    view = whole[:, :n].reshape(batch, K, units).transpose(1, 0, 2)
    return view, whole if batch_major else None


def members_view(whole: Array, K: int, units: int) -> Array:
    """The ``(K, batch, units)`` view of a batch-major array ``whole``."""
    return whole[:, :K * units].reshape(whole.shape[0], K, units).transpose(1, 0, 2)
