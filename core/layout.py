"""Where each parameter lives in the network's single flat parameter buffer.

All parameters of a network live in one contiguous 1-D array (and all gradients in another of
the same layout). Each named tensor is a reshaped view into it, so optimizers, clipping and the
norm telemetry work on the whole network in a handful of vectorised NumPy calls whatever its
depth. A layer's tensors are contiguous: layer ``i`` occupies
``flat[layer_offsets[i]:layer_offsets[i + 1]]`` in the order weight, bias, bn_gamma, bn_beta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FUSED_NORMS_MAX", "ParamLayout", "TensorSlot", "norms_by_reduceat", "segment_sumsq",
           "sumsq"]


@dataclass(frozen=True, slots=True)
class TensorSlot:
    """One named parameter tensor inside the flat buffer."""

    name: str  # e.g. "layers.0.weight"
    layer: int
    kind: str  # "weight" | "bias" | "bn_gamma" | "bn_beta"
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class ParamLayout:
    """Layout of an MLP's parameters: ``sizes = [n_in, hidden..., n_out]``."""

    slots: tuple[TensorSlot, ...]
    layer_offsets: np.ndarray  # int64, shape (n_layers + 1,)
    weight_offsets: np.ndarray  # int64, start of each layer's weight matrix
    weight_sizes: np.ndarray  # int64, size of each layer's weight matrix
    size: int
    n_layers: int
    _by_name: dict[str, TensorSlot] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_mlp(cls, sizes: list[int], batch_norm: list[bool]) -> ParamLayout:
        """Layout for layers ``sizes[i] -> sizes[i+1]``; ``batch_norm[i]`` for hidden layer i."""
        n_layers = len(sizes) - 1
        if len(batch_norm) != n_layers - 1:
            raise ValueError("batch_norm needs one flag per hidden layer")
        slots: list[TensorSlot] = []
        offset = 0
        layer_offsets = [0]
        for i in range(n_layers):
            fan_in, fan_out = sizes[i], sizes[i + 1]
            kinds: list[tuple[str, tuple[int, ...]]] = [
                ("weight", (fan_in, fan_out)),
                ("bias", (fan_out,)),
            ]
            if i < n_layers - 1 and batch_norm[i]:
                kinds += [("bn_gamma", (fan_out,)), ("bn_beta", (fan_out,))]
            for kind, shape in kinds:
                slot = TensorSlot(f"layers.{i}.{kind}", i, kind, shape, offset)
                slots.append(slot)
                offset += slot.size
            layer_offsets.append(offset)
        weights = [s for s in slots if s.kind == "weight"]
        layout = cls(
            slots=tuple(slots),
            layer_offsets=np.asarray(layer_offsets, dtype=np.int64),
            weight_offsets=np.asarray([s.offset for s in weights], dtype=np.int64),
            weight_sizes=np.asarray([s.size for s in weights], dtype=np.int64),
            size=offset,
            n_layers=n_layers,
        )
        layout._by_name.update({s.name: s for s in slots})
        return layout

    def slot(self, name: str) -> TensorSlot:
        return self._by_name[name]

    def view(self, flat: np.ndarray, slot: TensorSlot) -> np.ndarray:
        """The tensor ``slot`` as a live view into ``flat``."""
        return flat[slot.offset:slot.stop].reshape(slot.shape)

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """All tensors, in order, as live views into ``flat``."""
        return [self.view(flat, s) for s in self.slots]

    def layer_segment(self, flat: np.ndarray, layer: int) -> np.ndarray:
        """All of layer ``layer``'s parameters (weight, bias, bn) as one contiguous view."""
        return flat[int(self.layer_offsets[layer]):int(self.layer_offsets[layer + 1])]

    def layer_sumsq(self, flat: np.ndarray) -> np.ndarray:
        """Per-layer sum of squares of ``flat``, accumulated in float64, shape (n_layers,)."""
        return segment_sumsq(flat, self.layer_offsets)


# networks up to this many parameters sum the squares of weights and update in one pass over
# both side by side (the single trainer); the stacked trainer then applies the rule below to
# that pass's size
FUSED_NORMS_MAX = 64 * 1024


def norms_by_reduceat(size: int, n_segments: int) -> bool:
    """How the trainers sum the squares of ``size`` elements in ``n_segments`` segments: one
    square + ``reduceat`` for small buffers or many small segments (deep narrow nets), else one
    BLAS dot per segment. One rule for the single and the stacked trainer, so that a member's
    norms are the same numbers as its single run's (a float32 dot and ``reduceat`` sum in
    different orders)."""
    return size <= 64 * 1024 or size // max(n_segments, 1) < 16 * 1024


def sumsq(x: np.ndarray) -> float:
    """``sum(x**2)`` of a 1-D array, accumulated in its dtype and recomputed in float64 if a
    float32 sum overflows (so a finite array never reports an infinite norm).

    Silent only under ``np.errstate(all="ignore")`` (the trainer sets it once per run; a
    per-call errstate would cost more than the sum on a small layer).
    """
    s = float(np.dot(x, x))
    if x.dtype != np.float64 and not np.isfinite(s):
        x64 = x.astype(np.float64)
        s = float(np.dot(x64, x64))
    return s


def segment_sumsq(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of squares of each segment ``flat[offsets[i]:offsets[i+1]]`` as float64."""
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.float64)
    with np.errstate(all="ignore"):
        for i in range(n):
            out[i] = sumsq(flat[int(offsets[i]):int(offsets[i + 1])])
    return out
