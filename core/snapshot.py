"""Copies of a network's state at one moment: what a model file is written from.

The trainer keeps the parameters of its lowest validation loss (:class:`BestParameters`), the
stacked trainer each member's parameters when it leaves the stack; :mod:`core.model_io`
turns either into a :class:`core.model_io.Model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.layout import ParamLayout

__all__ = ["BestParameters", "NetworkCopy"]


@dataclass
class NetworkCopy:
    """A network's flat parameters and batch-norm running statistics (or one stacked
    member's, ``row``), copied: later training does not change them."""

    flat: np.ndarray
    layout: ParamLayout
    running_mean: dict[int, np.ndarray]
    running_var: dict[int, np.ndarray]

    @classmethod
    def of(cls, network: Any, row: int | None = None) -> NetworkCopy:
        """Copy an :class:`core.network.MLP`, or row ``row`` of a
        :class:`core.stacked.StackedMLP` (running statistics ``(K, 1, units)``)."""
        if row is None:
            return cls(network.flat.copy(), network.layout,
                       {i: v.copy() for i, v in network.running_mean.items()},
                       {i: v.copy() for i, v in network.running_var.items()})
        return cls(network.flat[row].copy(), network.layout,
                   {i: v[row, 0].copy() for i, v in network.running_mean.items()},
                   {i: v[row, 0].copy() for i, v in network.running_var.items()})


@dataclass
class BestParameters:
    """The parameters a trainer kept at its lowest finite validation loss."""

    network: NetworkCopy
    epoch: int
    step: int  # the last step of that epoch
    val_loss: float
