"""The training spec: THE single definition of a job's input.

The same pydantic models validate the HTTP body (and generate its OpenAPI schema) and
configure :class:`core.trainer.Trainer`. Field names are a contract (see DESIGN.md): add
fields, never rename them.

Validation is strict: booleans must be JSON booleans, numbers must be finite JSON numbers
(no ``"1.0"`` strings, no NaN/Infinity), unknown fields are errors. Resource limits
(:class:`SpecLimits`) are checked here, before anything is allocated; pass your own with
``TrainingSpec.model_validate(body, context={"limits": SpecLimits(...)})``.

The parts live in their own modules — :mod:`core.spec_base` (strict bases, limits),
:mod:`core.spec_data`, :mod:`core.spec_model`, :mod:`core.spec_training` — and every name is
importable from here.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, model_validator

from core.spec_base import DEFAULT_LIMITS, SpecLimits, _fail, _limit, _Strict
from core.spec_data import (
    BUILTIN_DATASETS,
    SYNTHETIC_DATASETS,
    BuiltinData,
    BuiltinName,
    DataShape,
    DataSpec,
    InlineData,
    SyntheticData,
    SyntheticName,
    Task,
    UploadedData,
    UploadedShape,
    data_shape,
)
from core.spec_model import (
    ACTIVATIONS,
    INIT_SCHEMES,
    Activation,
    HeNormal,
    HeUniform,
    HiddenLayer,
    InitSpec,
    LecunNormal,
    ModelSpec,
    NormalInit,
    Orthogonal,
    UniformInit,
    XavierNormal,
    XavierUniform,
)
from core.spec_training import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    AdaptiveClipping,
    ClippingSpec,
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    GlobalNormClipping,
    LayerNormClipping,
    LinearWarmupSchedule,
    MonitorSpec,
    NoClipping,
    NotifyEvent,
    NotifySpec,
    OptimizerSpec,
    RMSprop,
    ScheduleSpec,
    StepSchedule,
    TrainingOptions,
    ValueClipping,
)

__all__ = [
    "ACTIVATIONS",
    "BUILTIN_DATASETS",
    "DEFAULT_LIMITS",
    "INIT_SCHEMES",
    "SGD",
    "SYNTHETIC_DATASETS",
    "Activation",
    "Adagrad",
    "Adam",
    "AdamW",
    "AdaptiveClipping",
    "BuiltinData",
    "BuiltinName",
    "ClippingSpec",
    "ConstantSchedule",
    "CosineSchedule",
    "DataShape",
    "DataSpec",
    "ExponentialSchedule",
    "GlobalNormClipping",
    "HeNormal",
    "HeUniform",
    "HiddenLayer",
    "InitSpec",
    "InlineData",
    "LayerNormClipping",
    "LecunNormal",
    "LinearWarmupSchedule",
    "Loss",
    "ModelSpec",
    "MonitorSpec",
    "NoClipping",
    "NormalInit",
    "NotifyEvent",
    "NotifySpec",
    "OptimizerSpec",
    "Orthogonal",
    "RMSprop",
    "ScheduleSpec",
    "SpecLimits",
    "StepSchedule",
    "SyntheticData",
    "SyntheticName",
    "Task",
    "TrainingOptions",
    "TrainingSpec",
    "UniformInit",
    "UploadedData",
    "UploadedShape",
    "ValueClipping",
    "XavierNormal",
    "XavierUniform",
    "data_shape",
]

Loss = Literal["mse", "cross_entropy", "binary_cross_entropy"]


class TrainingSpec(_Strict):
    """A network + training job. Every field has a default except `data`."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "name": "deep-relu-normal-init",
                    "seed": 0,
                    "dtype": "float64",
                    "data": {"source": "synthetic", "name": "spirals", "n_samples": 600,
                             "n_classes": 3, "noise": 0.2},
                    "model": {"hidden": [{"units": 64, "activation": "relu"},
                                         {"units": 64, "activation": "relu",
                                          "batch_norm": True}],
                              "init": {"scheme": "normal", "std": 1.0}},
                    "loss": "cross_entropy",
                    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
                    "schedule": {"name": "constant"},
                    "clipping": {"mode": "global_norm", "max_norm": 5.0},
                    "training": {"epochs": 20, "batch_size": 32, "shuffle": True,
                                 "validation_split": 0.2},
                    "monitor": {"record_every": 1, "stop_on_explosion": True},
                }
            ]
        },
    )

    name: str | None = Field(None, max_length=200, description="Free-form label.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seeds data, init, shuffling.")
    dtype: Literal["float32", "float64"] = Field(
        "float64", description="Floating point type of the whole computation."
    )
    data: DataSpec = Field(description="Where the examples come from.")
    model: ModelSpec = Field(ModelSpec(), description="The network.")
    loss: Loss | None = Field(
        None,
        description="`mse`, `cross_entropy` (integer labels, softmax inside), "
                    "`binary_cross_entropy` (2 classes, sigmoid inside). Default: "
                    "cross_entropy for classification data, mse for regression data.",
    )
    optimizer: OptimizerSpec = Field(
        SGD(name="sgd", lr=0.01, momentum=0.9),
        description="Update rule (torch.optim semantics and defaults).",
    )
    schedule: ScheduleSpec = Field(
        ConstantSchedule(name="constant"),
        description="Learning-rate schedule over optimizer steps.",
    )
    clipping: ClippingSpec = Field(
        NoClipping(mode="none"),
        description="Gradient clipping, applied after the pre-clip norms are recorded.",
    )
    training: TrainingOptions = Field(TrainingOptions(), description="Epochs, batches.")
    monitor: MonitorSpec = Field(MonitorSpec(), description="Telemetry options.")
    notify: NotifySpec | None = Field(
        None, description="Optional webhook for this job's events (null: none). Training "
                          "ignores it.")

    @model_validator(mode="after")
    def _check_consistency_and_limits(self, info: ValidationInfo) -> TrainingSpec:
        limits = SpecLimits.from_context(info)
        shape = data_shape(self.data)
        if self.loss is None:
            self.loss = "cross_entropy" if shape.task == "classification" else "mse"
        if shape.task == "regression" and self.loss != "mse":
            raise _fail(
                ("loss",),
                f"loss {self.loss!r} needs class labels but the data are a regression task; "
                "use loss 'mse'",
                value=self.loss,
            )
        if self.loss == "binary_cross_entropy" and shape.n_classes != 2:
            raise _fail(
                ("loss",),
                f"binary_cross_entropy needs exactly 2 classes (labels 0/1); the data have "
                f"{shape.n_classes}",
                value=self.loss,
            )
        # --- limits, from shapes alone (nothing allocated yet) ---
        if shape.n_samples > limits.max_samples:
            raise _limit(("data", "n_samples"), "the number of samples", shape.n_samples,
                         "max_samples", limits.max_samples)
        if shape.n_samples * shape.n_features > limits.max_data_values:
            raise _limit(("data",), "the number of data values (samples x features)",
                         shape.n_samples * shape.n_features, "max_data_values",
                         limits.max_data_values)
        n_layers = len(self.model.hidden) + 1
        if n_layers > limits.max_layers:
            raise _limit(("model", "hidden"), "the number of layers (hidden + output)", n_layers,
                         "max_layers", limits.max_layers)
        for i, layer in enumerate(self.model.hidden):
            if layer.units > limits.max_units:
                raise _limit(("model", "hidden", i, "units"), "units", layer.units, "max_units",
                             limits.max_units)
        n_params = self.parameter_count()
        if n_params > limits.max_parameters:
            raise _limit(("model",), "the parameter count", n_params, "max_parameters",
                         limits.max_parameters)
        if self.training.batch_size > limits.max_batch_size:
            raise _limit(("training", "batch_size"), "batch_size", self.training.batch_size,
                         "max_batch_size", limits.max_batch_size)
        if self.n_train_samples() < 1:
            raise _fail(("training", "validation_split"),
                        "validation_split leaves no training examples")
        steps = self.total_steps()
        if steps > limits.max_steps:
            raise _limit(("training", "epochs"), "the number of optimizer steps (epochs x batches)",
                         steps, "max_steps", limits.max_steps,
                         " (lower epochs, raise batch_size or set training.max_steps)")
        return self

    # ---- derived quantities (no allocation) ----
    def output_units(self) -> int:
        """Width of the output layer implied by the data and the loss."""
        shape = data_shape(self.data)
        if shape.task == "regression":
            return shape.n_outputs_regression
        if self.loss == "binary_cross_entropy":
            return 1
        assert shape.n_classes is not None
        return shape.n_classes

    def layer_sizes(self) -> list[int]:
        """[input width, hidden widths..., output width]."""
        shape = data_shape(self.data)
        return [shape.n_features, *(h.units for h in self.model.hidden), self.output_units()]

    def parameter_count(self) -> int:
        sizes = self.layer_sizes()
        n = sum(a * b + b for a, b in itertools.pairwise(sizes))
        n += sum(2 * h.units for h in self.model.hidden if h.batch_norm)
        return n

    def n_train_samples(self) -> int:
        n = data_shape(self.data).n_samples
        n_val = math.floor(n * self.training.validation_split)
        return n - n_val

    def steps_per_epoch(self) -> int:
        return -(-self.n_train_samples() // self.training.batch_size)

    def total_steps(self) -> int:
        steps = self.training.epochs * self.steps_per_epoch()
        if self.training.max_steps is not None:
            steps = min(steps, self.training.max_steps)
        return steps
