"""A run's step records as NumPy columns, the form every offline detector reads."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np

from core.spec import TrainingSpec
from core.telemetry import StepRecord

__all__ = ["LOG_OF_ZERO", "RunSeries", "layer_activations", "safe_log", "unique_steps"]

_LAYER_FIELDS = (
    "grad_norm", "weight_grad_norm", "weight_norm", "update_norm",
    "act_mean", "act_std", "dead_fraction", "saturated_fraction",
)


def layer_activations(spec: TrainingSpec) -> list[str]:
    """The activation after each layer: the hidden layers' in order, then ``linear`` (output)."""
    return [str(h.activation) for h in spec.model.hidden] + ["linear"]


@dataclass
class RunSeries:
    """Columns of the recorded steps (records may be thinned: use ``step``, not the index).

    ``loss``, ``grad_norm``, ``clipped_grad_norm``, ``lr``: shape ``(n,)``; per-layer fields:
    shape ``(n, n_layers)`` with NaN where a statistic was not recorded (``None``).
    """

    spec: TrainingSpec
    step: np.ndarray
    epoch: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    clipped_grad_norm: np.ndarray
    lr: np.ndarray
    clipped: np.ndarray
    layer: dict[str, np.ndarray]
    present: dict[str, np.ndarray]  # per-layer field: which entries were recorded (not None)
    n_layers: int
    # every record holds layers 0..n_layers-1, in order, once each (the trainer's records)
    regular: bool = True

    @classmethod
    def from_records(cls, spec: TrainingSpec, records: Sequence[StepRecord]) -> RunSeries:
        """Columns from records in any order (those :func:`unique_steps` keeps)."""
        ordered = unique_steps(records)
        steps: list[int] = list(map(_STEP, ordered))
        n_layers = len(spec.model.hidden) + 1
        layer, present, regular = _layer_columns(ordered, n_layers)

        def column(name: str, dtype: type) -> np.ndarray:
            return np.array(list(map(attrgetter(name), ordered)), dtype=dtype)

        return cls(
            spec=spec,
            step=np.array(steps, dtype=np.int64),
            epoch=column("epoch", np.int64),
            loss=column("loss", np.float64),
            grad_norm=column("grad_norm", np.float64),
            clipped_grad_norm=column("clipped_grad_norm", np.float64),
            lr=column("lr", np.float64),
            clipped=np.array([bool(r.clipped) for r in ordered], dtype=bool),
            layer=layer,
            present=present,
            n_layers=n_layers,
            regular=regular,
        )

    def __len__(self) -> int:
        return int(self.step.shape[0])

    @property
    def activations(self) -> list[str]:
        return layer_activations(self.spec)

    def index_of(self, step: int) -> int:
        """Index of the first record at or after ``step`` (``len`` if none)."""
        return int(np.searchsorted(self.step, step, side="left"))

    def finite_mask(self) -> np.ndarray:
        """Records whose loss, global norm and per-layer norms are all finite."""
        ok = np.isfinite(self.loss) & np.isfinite(self.grad_norm)
        for name in ("grad_norm", "weight_norm", "update_norm"):
            vals = self.layer[name]
            ok &= np.all(np.isfinite(vals) | ~self.present[name], axis=1)
        return ok


def unique_steps(records: Iterable[StepRecord]) -> list[StepRecord]:
    """The records sorted by step, each step once: of a step recorded twice (a sink that wrote
    it again after a retry), the later record."""
    records = list(records)
    steps: list[int] = list(map(_STEP, records))
    if all(map(operator.lt, steps, steps[1:])):  # the usual: in order, each step once
        return records
    by_step: dict[int, StepRecord] = {}
    for r in records:
        by_step[r.step] = r
    return [by_step[s] for s in sorted(by_step)]


_GETTERS = {name: attrgetter(name) for name in ("layer", *_LAYER_FIELDS)}
_STEP = attrgetter("step")


def _layer_columns(ordered: Sequence[StepRecord], n_layers: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """Per-layer fields as ``(n, n_layers)`` columns (NaN where absent), their presence, and
    whether the records' layers were the usual ones.

    The usual records (every step holds layers ``0..n_layers-1`` in order) are read a field
    at a time (C-speed attribute reads, None -> NaN in the conversion); anything else goes
    cell by cell. Both give the same arrays."""
    n = len(ordered)
    flat = [lr_ for r in ordered for lr_ in r.layers]
    if list(map(_GETTERS["layer"], flat)) != list(range(n_layers)) * n:
        return (*_layer_columns_per_cell(ordered, n_layers), False)
    layer: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name in _LAYER_FIELDS:
        get = _GETTERS[name]
        if flat and None not in map(get, flat[:n_layers]):
            # the usual: every value recorded and none NaN (fromiter reads None as NaN too)
            arr = np.fromiter(map(get, flat), np.float64, len(flat))
            if not np.isnan(arr).any():
                layer[name] = arr.reshape(n, n_layers)
                present[name] = np.ones((n, n_layers), dtype=bool)
                continue
        vals: list[Any] = list(map(_GETTERS[name], flat))
        absent = vals.count(None)
        if absent == len(vals):
            arr = np.full((n, n_layers), np.nan)
            have = np.zeros((n, n_layers), dtype=bool)
        else:
            arr = np.array(vals, dtype=np.float64).reshape(n, n_layers)  # None -> NaN
            if absent:
                have = np.array([v is not None for v in vals], dtype=bool).reshape(n, n_layers)
            else:
                have = np.ones((n, n_layers), dtype=bool)
        layer[name] = arr
        present[name] = have
    return layer, present, True


def _layer_columns_per_cell(ordered: Sequence[StepRecord], n_layers: int
                            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`_layer_columns` cell by cell: records holding a layer more than once."""
    n = len(ordered)
    layer: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name in _LAYER_FIELDS:
        arr = np.full((n, n_layers), np.nan)
        have = np.zeros((n, n_layers), dtype=bool)
        for i, r in enumerate(ordered):
            for lr_ in r.layers:
                if 0 <= lr_.layer < n_layers:
                    v: Any = getattr(lr_, name)
                    if v is not None:
                        arr[i, lr_.layer] = v
                        have[i, lr_.layer] = True
        layer[name] = arr
        present[name] = have
    return layer, present


LOG_OF_ZERO = -745.0
"""What :func:`safe_log` gives for 0: below the log of the smallest positive float (-744.44)."""


def safe_log(x: float) -> float:
    """Natural log that maps 0 to :data:`LOG_OF_ZERO` and keeps NaN/Inf as they are."""
    if x > 0.0:
        return math.log(x)
    if x == 0.0:
        return LOG_OF_ZERO
    return math.nan
