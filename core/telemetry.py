"""Telemetry records emitted by the trainer, and the sink protocol that receives them.

Every number is a Python ``float`` and may be NaN or +-Inf: those are data, never errors.

Definitions (per step, before clipping unless said otherwise):

- ``StepRecord.grad_norm``: global L2 norm of all parameter gradients (what
  ``torch.nn.utils.clip_grad_norm_`` returns), computed in float64.
- ``StepRecord.clipped_grad_norm``: the same after clipping (equal when nothing was clipped).
- ``LayerRecord.grad_norm``: L2 norm of all of that layer's parameter gradients (weight, bias,
  and batch-norm gamma/beta), so that ``sum(layer.grad_norm**2) == grad_norm**2``.
- ``LayerRecord.weight_grad_norm``: L2 norm of the weight-matrix gradient alone.
- ``LayerRecord.weight_norm``: Frobenius norm of the weight matrix after this step's update.
- ``LayerRecord.update_norm``: Frobenius norm of this step's change of the weight matrix.
- activation statistics describe the layer's output on this batch (post-activation for hidden
  layers, the logits for the output layer): ``act_mean``, ``act_std``; ``dead_fraction`` is the
  fraction of ReLU / leaky-ReLU units whose output is <= 0 for every example of the batch; ``saturated_fraction`` the fraction of outputs in
  the flat tails (|a| > 0.99 for tanh, a < 0.01 or a > 0.99 for sigmoid). Each is ``None``
  where it does not apply to the activation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import WithJsonSchema

__all__ = [
    "LAYER_FIELDS",
    "NON_FINITE_STRINGS",
    "STEP_FIELDS",
    "BlockSink",
    "EpochRecord",
    "JsonFloat",
    "LayerRecord",
    "MemorySink",
    "NonFiniteEvent",
    "Sink",
    "StepBlock",
    "StepRecord",
    "StopReason",
    "TensorKind",
    "record_from_values",
]

NON_FINITE_STRINGS = ["NaN", "Infinity", "-Infinity"]

JsonFloat = Annotated[
    float,
    WithJsonSchema({
        "anyOf": [{"type": "number"}, {"type": "string", "enum": NON_FINITE_STRINGS}],
        "description": "A number; NaN and +-Infinity are the strings \"NaN\", \"Infinity\", "
                       "\"-Infinity\" (protobuf JSON convention).",
    }),
]
"""A float that may be NaN or +-Inf; pydantic models using it (with
``ser_json_inf_nan="strings"``) document it in JSON Schema as number-or-those-strings."""

TensorKind = Literal["loss", "activation", "gradient", "weight", "update"]
StopReason = Literal["completed", "non_finite", "cancelled", "max_runtime", "early_stop", "explosion"]


@dataclass(slots=True)
class LayerRecord:
    """One layer's statistics at one step."""

    layer: int
    grad_norm: float
    weight_grad_norm: float
    weight_norm: float
    update_norm: float
    act_mean: float | None = None
    act_std: float | None = None
    dead_fraction: float | None = None
    saturated_fraction: float | None = None


@dataclass(slots=True)
class StepRecord:
    """One optimizer step. ``step`` counts from 0 (the first update)."""

    step: int
    epoch: int
    loss: float
    grad_norm: float
    clipped_grad_norm: float
    lr: float
    clipped: bool
    layers: list[LayerRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STEP_FIELDS: tuple[str, ...] = ("loss", "grad_norm", "clipped_grad_norm", "lr")
"""The per-step figures of a :class:`StepBlock` row, in order."""
LAYER_FIELDS: tuple[str, ...] = (
    "grad_norm", "weight_grad_norm", "weight_norm", "update_norm",
    "act_mean", "act_std", "dead_fraction", "saturated_fraction",
)
"""Each layer's figures of a :class:`StepBlock` row, in order (LayerRecord's fields)."""


def record_from_values(step: int, epoch: int, clipped: bool, vals: list[Any],
                       n_layers: int) -> StepRecord:
    """A StepRecord from one row of figures in :class:`StepBlock` order (None: absent)."""
    n_step, n_layer = len(STEP_FIELDS), len(LAYER_FIELDS)
    layers = [LayerRecord(ly, *vals[n_step + ly * n_layer:n_step + (ly + 1) * n_layer])
              for ly in range(n_layers)]
    return StepRecord(step, epoch, vals[0], vals[1], vals[2], vals[3], clipped, layers)


@dataclass
class StepBlock:
    """Consecutive emitted steps as arrays: what a :class:`BlockSink` receives.

    ``values`` is ``(n, 4 + 8 * n_layers)`` float64: per row the :data:`STEP_FIELDS`, then
    layer 0's :data:`LAYER_FIELDS`, layer 1's, ...; ``present`` (same shape, bool, possibly a
    read-only broadcast) is False where a statistic does not apply (None in a
    :class:`StepRecord`; the value there is NaN). ``n_layers`` is 0 without telemetry.
    """

    n_layers: int
    steps: np.ndarray  # (n,) int64
    epochs: np.ndarray  # (n,) int64
    clipped: np.ndarray  # (n,) bool
    values: np.ndarray
    present: np.ndarray

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def record(self, i: int) -> StepRecord:
        """Row ``i`` as a :class:`StepRecord` (built on demand)."""
        vals: list[Any] = self.values[i].tolist()
        present = self.present[i]
        if not present.all():
            for k in np.flatnonzero(~present).tolist():
                vals[k] = None
        return record_from_values(int(self.steps[i]), int(self.epochs[i]),
                                  bool(self.clipped[i]), vals, self.n_layers)

    def records(self) -> list[StepRecord]:
        return [self.record(i) for i in range(len(self))]


@dataclass(slots=True)
class EpochRecord:
    """End-of-epoch summary: mean training loss and validation figures (None without a split)."""

    epoch: int
    step: int  # last step of the epoch
    train_loss: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    train_accuracy: float | None = None


@dataclass(slots=True)
class NonFiniteEvent:
    """The first non-finite value seen in a run."""

    step: int
    layer: int | None  # None for the loss
    tensor: TensorKind
    value: Literal["nan", "inf"]

    def describe(self) -> str:
        where = "the loss" if self.layer is None else f"layer {self.layer}'s {self.tensor}"
        what = "NaN" if self.value == "nan" else "Inf"
        return f"first {what} at step {self.step} in {where}"


@runtime_checkable
class Sink(Protocol):
    """Receives telemetry in batches; may ask training to stop.

    The trainer calls :meth:`write_steps` with the emitted step records (in step order), once
    per step or in small groups, and :meth:`write_epoch` at every epoch end. ``should_stop``
    is polled after each write: returning a reason (e.g. ``"cancelled"``) ends training
    cleanly after the current step with that stop reason.
    """

    def write_steps(self, records: list[StepRecord]) -> None: ...

    def write_epoch(self, record: EpochRecord) -> None: ...

    def should_stop(self) -> StopReason | None: ...


@runtime_checkable
class BlockSink(Sink, Protocol):
    """A sink that also takes records as arrays: the trainer then hands it
    :class:`StepBlock` s (every few dozen emitted steps, and before an epoch record, an
    alert or the end of the run) instead of calling :meth:`Sink.write_steps` per step."""

    def write_block(self, block: StepBlock) -> None: ...


class MemorySink:
    """Keeps every record in memory; can stop training after ``stop_after`` steps (for tests)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[StepRecord] = []
        self.epochs: list[EpochRecord] = []
        self._stop_after = stop_after

    def write_steps(self, records: list[StepRecord]) -> None:
        self.steps.extend(records)

    def write_epoch(self, record: EpochRecord) -> None:
        self.epochs.append(record)

    def should_stop(self) -> StopReason | None:
        if self._stop_after is not None and self.steps and self.steps[-1].step + 1 >= self._stop_after:
            return "cancelled"
        return None
