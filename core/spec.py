"""The training spec: THE single definition of a job's input.

The same pydantic models validate the HTTP body (and generate its OpenAPI schema) and
configure :class:`core.trainer.Trainer`. Field names are a contract (see DESIGN.md): add
fields, never rename them.

Validation is strict: booleans must be JSON booleans, numbers must be finite JSON numbers
(no ``"1.0"`` strings, no NaN/Infinity), unknown fields are errors. Resource limits
(:class:`SpecLimits`) are checked here, before anything is allocated; pass your own with
``TrainingSpec.model_validate(body, context={"limits": SpecLimits(...)})``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "ACTIVATIONS",
    "BUILTIN_DATASETS",
    "SYNTHETIC_DATASETS",
    "BuiltinData",
    "ClippingSpec",
    "DataSpec",
    "HiddenLayer",
    "InitSpec",
    "InlineData",
    "ModelSpec",
    "MonitorSpec",
    "NotifySpec",
    "OptimizerSpec",
    "ScheduleSpec",
    "SpecLimits",
    "SyntheticData",
    "TrainingOptions",
    "TrainingSpec",
    "UploadedData",
    "UploadedShape",
    "data_shape",
]


class _Strict(BaseModel):
    """Base for every spec part: no unknown fields, no type coercion, finite floats."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _fail(loc: tuple[str | int, ...], message: str, *, kind: str = "value_error",
          value: Any = None) -> ValidationError:
    """A validation error located at ``loc`` (relative to the model being validated).

    Raised from model validators so that cross-field errors still name the field path.
    """
    return ValidationError.from_exception_data(
        "TrainingSpec",
        [InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)],
    )


def _limit(loc: tuple[str | int, ...], what: str, value: int, name: str, limit: int,
           hint: str = "") -> ValidationError:
    return _fail(loc, f"{what} is {value}; the limit {name} is {limit}{hint}",
                 kind="limit_exceeded", value=value)


def _lax_float(v: Any) -> Any:
    # Accept JSON integers for float fields (1 -> 1.0) but nothing else (no "1.0", no True).
    if isinstance(v, bool):
        return v  # left to the strict float check, which names the exact field
    if isinstance(v, int):
        return float(v)
    return v


class _FloatsAcceptInts(_Strict):
    """Float fields accept JSON integers (``1`` means ``1.0``); strings/booleans stay errors."""

    @model_validator(mode="before")
    @classmethod
    def _ints_to_floats(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if name in out and _is_float_annotation(field.annotation):
                out[name] = _lax_float(out[name])
        return out


def _is_float_annotation(annotation: Any) -> bool:
    if annotation is float:
        return True
    args = getattr(annotation, "__args__", ())
    return float in args


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecLimits:
    """Resource limits checked during validation, before anything is allocated."""

    max_parameters: int = 20_000_000
    max_layers: int = 100
    max_units: int = 8_192
    max_steps: int = 1_000_000
    max_samples: int = 1_000_000
    max_data_values: int = 20_000_000
    max_inline_values: int = 1_000_000
    max_batch_size: int = 65_536

    @classmethod
    def from_context(cls, info: ValidationInfo | None) -> SpecLimits:
        ctx = info.context if info is not None else None
        if isinstance(ctx, dict) and isinstance(ctx.get("limits"), SpecLimits):
            limits: SpecLimits = ctx["limits"]
            return limits
        return DEFAULT_LIMITS


DEFAULT_LIMITS = SpecLimits()

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

Task = Literal["classification", "regression"]

SYNTHETIC_DATASETS: dict[str, dict[str, Any]] = {
    # name: task, default n_classes, default noise, whether n_classes/n_features are free
    "spirals": {"task": "classification", "n_classes": 3, "noise": 0.2, "free_classes": True,
                "free_features": False, "description": "Interleaved 2-D spirals, one arm per class."},
    "moons": {"task": "classification", "n_classes": 2, "noise": 0.1, "free_classes": False,
              "free_features": False, "description": "Two interleaving half circles (2-D)."},
    "circles": {"task": "classification", "n_classes": 2, "noise": 0.05, "free_classes": False,
                "free_features": False, "description": "A small circle inside a large one (2-D)."},
    "blobs": {"task": "classification", "n_classes": 3, "noise": 1.0, "free_classes": True,
              "free_features": True, "description": "Gaussian clusters; noise is the cluster std."},
    "xor": {"task": "classification", "n_classes": 2, "noise": 0.1, "free_classes": False,
            "free_features": False, "description": "Four Gaussian clusters in XOR layout (2-D)."},
    "linear": {"task": "regression", "n_classes": None, "noise": 0.1, "free_classes": False,
               "free_features": True, "description": "y = x @ w + b + noise, w ~ N(0, 1)."},
    "sine": {"task": "regression", "n_classes": None, "noise": 0.1, "free_classes": False,
             "free_features": False, "description": "y = sin(x) + noise, x ~ U(-pi, pi) (1-D)."},
}

BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    "iris": {"task": "classification", "n_samples": 150, "n_features": 4, "n_classes": 3,
             "description": "Fisher's iris flowers: 4 measurements, 3 species."},
    "digits": {"task": "classification", "n_samples": 1797, "n_features": 64, "n_classes": 10,
               "description": "8x8 handwritten digits (UCI), pixel values 0..16."},
    "wine": {"task": "classification", "n_samples": 178, "n_features": 13, "n_classes": 3,
             "description": "Chemical analysis of 3 wine cultivars (UCI), unscaled features."},
    "breast_cancer": {"task": "classification", "n_samples": 569, "n_features": 30,
                      "n_classes": 2, "description": "Wisconsin diagnostic breast cancer (UCI)."},
    "diabetes": {"task": "regression", "n_samples": 442, "n_features": 10, "n_classes": None,
                 "description": "Diabetes progression (Efron et al. 2004), raw unscaled "
                                "features and targets in 25..346: a real badly-scaled target."},
}

SyntheticName = Literal["spirals", "moons", "circles", "blobs", "xor", "linear", "sine"]
BuiltinName = Literal["iris", "digits", "wine", "breast_cancer", "diabetes"]


class SyntheticData(_FloatsAcceptInts):
    """A named synthetic generator, seeded from the spec's seed."""

    source: Literal["synthetic"] = Field(description="Generated data.")
    name: SyntheticName = Field(
        "spirals",
        description="Generator: classification `spirals`, `moons`, `circles`, `blobs`, `xor`; "
                    "regression `linear`, `sine`.",
    )
    n_samples: int = Field(600, ge=2, description="Number of examples generated.")
    n_features: int | None = Field(
        None, ge=1,
        description="Input width (`blobs`, `linear` only; others are fixed: 2-D, `sine` 1-D). "
                    "Default 2 (1 for `sine`).",
    )
    n_classes: int | None = Field(
        None, ge=2, le=1000,
        description="Number of classes (`spirals`, `blobs`); fixed 2 for moons/circles/xor; "
                    "null for regression. Default per generator.",
    )
    noise: float | None = Field(None, ge=0, description="Noise level. Default per generator.")
    input_scale: float = Field(
        1.0, gt=0,
        description="Multiply inputs by this factor: badly scaled inputs are a classic cause "
                    "of exploding gradients (e.g. 1000).",
        examples=[1.0, 1000.0],
    )
    target_scale: float = Field(
        1.0, gt=0,
        description="Regression only: multiply targets by this factor (e.g. 1000 explodes MSE "
                    "training with a learning rate tuned for unit targets).",
        examples=[1.0, 1000.0],
    )
    standardize: bool = Field(
        False, description="Standardise inputs (and regression targets) with training-split "
                           "statistics. Off by default: data are used as given."
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> SyntheticData:
        meta = SYNTHETIC_DATASETS[self.name]
        if self.n_classes is None:
            self.n_classes = meta["n_classes"]
        elif not meta["free_classes"]:
            if meta["task"] == "regression":
                raise _fail(("n_classes",), f"n_classes does not apply to regression generator {self.name!r}")
            if self.n_classes != meta["n_classes"]:
                raise _fail(
                    ("n_classes",),
                    f"generator {self.name!r} has exactly {meta['n_classes']} classes, "
                    f"got n_classes={self.n_classes}"
                )
        default_features = 1 if self.name == "sine" else 2
        if self.n_features is None:
            self.n_features = default_features
        elif not meta["free_features"] and self.n_features != default_features:
            raise _fail(
                ("n_features",),
                f"generator {self.name!r} is {default_features}-D; n_features applies only to "
                f"'blobs' and 'linear'"
            )
        if self.noise is None:
            self.noise = meta["noise"]
        if self.target_scale != 1.0 and meta["task"] != "regression":
            raise _fail(("target_scale",), "target_scale applies only to regression generators (linear, sine)")
        if self.n_classes is not None and self.n_samples < self.n_classes:
            raise _fail(("n_samples",), f"n_samples={self.n_samples} is smaller than n_classes={self.n_classes}")
        return self


class InlineData(_Strict):
    """Data given in the request body."""

    source: Literal["inline"] = Field(description="Data in the body.")
    task: Task = Field(
        description="`classification`: y holds integer class labels 0..K-1; `regression`: y "
                    "holds numbers (one per example) or rows of numbers (multi-output)."
    )
    X: list[list[float]] = Field(
        description="Inputs, one row per example, all rows the same length, finite numbers.",
        min_length=2,
        examples=[[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]],
    )
    y: list[int] | list[float] | list[list[float]] = Field(
        description="Targets, one per row of X.", examples=[[0, 1, 1, 0]]
    )
    standardize: bool = Field(False, description="Standardise inputs (and regression targets).")

    @model_validator(mode="before")
    @classmethod
    def _check_sizes_before_parsing(cls, data: Any, info: ValidationInfo) -> Any:
        # Count values before pydantic builds millions of Python floats.
        limits = SpecLimits.from_context(info)
        if isinstance(data, dict):
            X = data.get("X")
            if isinstance(X, list):
                n = sum(len(r) if isinstance(r, list) else 1 for r in X)
                if n > limits.max_inline_values:
                    raise _limit(
                        ("X",), "inline X: the number of values", n, "max_inline_values",
                        limits.max_inline_values)
            # JSON integers are fine where floats are expected (strict mode would refuse them)
            data = dict(data)
            if isinstance(X, list):
                data["X"] = [[_lax_float(v) for v in r] if isinstance(r, list) else r for r in X]
            y = data.get("y")
            if data.get("task") == "regression" and isinstance(y, list):
                data["y"] = [[_lax_float(v) for v in r] if isinstance(r, list) else _lax_float(r)
                             for r in y]
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> InlineData:
        width = len(self.X[0])
        if width == 0:
            raise _fail(("X", 0), "X rows must not be empty")
        for i, row in enumerate(self.X):
            if len(row) != width:
                raise _fail(
                    ("X", i),
                    f"X is ragged: row 0 has {width} values but row {i} has {len(row)}"
                )
        if len(self.y) != len(self.X):
            raise _fail(("y",), f"X has {len(self.X)} rows but y has {len(self.y)} entries")
        if self.task == "classification":
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in self.y):
                raise _fail(("y",), "classification y must be integer class labels 0..K-1")
            labels = [int(v) for v in self.y]  # type: ignore[arg-type]
            if min(labels) < 0:
                raise _fail(("y",), f"class labels must be >= 0, got {min(labels)}")
            if len(set(labels)) < 2:
                raise _fail(("y",), "classification y needs at least 2 distinct classes")
        else:
            if isinstance(self.y[0], list):
                w = len(self.y[0])
                if w == 0:
                    raise _fail(("y", 0), "regression y rows must not be empty")
                for i, r in enumerate(self.y):
                    if not isinstance(r, list) or len(r) != w:
                        raise _fail(("y", i), f"y is ragged at row {i}")
            elif any(isinstance(v, list) for v in self.y):
                raise _fail(("y",), "y mixes numbers and rows")
        return self

    @property
    def n_classes(self) -> int | None:
        if self.task != "classification":
            return None
        return max(int(v) for v in self.y) + 1  # type: ignore[arg-type]

    @property
    def n_outputs(self) -> int:
        if self.task == "classification":
            return self.n_classes or 2
        return len(self.y[0]) if isinstance(self.y[0], list) else 1


class BuiltinData(_Strict):
    """A small real data set bundled with the package (no network access)."""

    source: Literal["builtin"] = Field(description="Bundled real data.")
    name: BuiltinName = Field(
        description="`iris`, `digits`, `wine`, `breast_cancer` (classification), `diabetes` "
                    "(regression, raw badly scaled targets)."
    )
    standardize: bool = Field(False, description="Standardise inputs (and regression targets).")


@dataclass(frozen=True)
class UploadedShape:
    """What the server knows about an uploaded data set (see :class:`UploadedData`)."""

    task: Task
    n_samples: int
    n_features: int
    n_classes: int | None  # classification: max label + 1; regression: None
    n_targets: int = 1  # regression: target columns; classification: 1


_UPLOADED_SHAPE_FIELDS = ("task", "n_samples", "n_features", "n_classes", "n_targets")


class UploadedData(_Strict):
    """A data set uploaded with ``POST /v1/datasets``, referred to by its id.

    Core never reads the server's storage: the server fills in the shape fields from the data
    set's record when it validates the spec (pass ``context={"uploaded": lookup}``, where
    ``lookup(id)`` returns an :class:`UploadedShape` or ``None`` for an unknown or invisible
    data set), and whoever trains it hands the arrays over with :meth:`attach` before the
    data are built. Shape fields given in the body must agree with the data set.
    """

    source: Literal["uploaded"] = Field(description="A data set uploaded to this server.")
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$",
                    description="The data set's id (`POST /v1/datasets`).")
    task: Task | None = Field(None, description="Filled in from the data set.")
    n_samples: int | None = Field(None, ge=2, description="Filled in from the data set.")
    n_features: int | None = Field(None, ge=1, description="Filled in from the data set: the "
                                                           "network's input width.")
    n_classes: int | None = Field(None, ge=2, description="Filled in from the data set "
                                                          "(classification: max label + 1).")
    n_targets: int | None = Field(None, ge=1, description="Filled in from the data set: "
                                                          "regression target columns.")
    standardize: bool = Field(False, description="Standardise inputs (and regression targets).")
    _arrays: tuple[Any, Any] | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any, info: ValidationInfo) -> Any:
        ctx = info.context if info is not None else None
        lookup = ctx.get("uploaded") if isinstance(ctx, dict) else None
        if lookup is None or not isinstance(data, dict) or not isinstance(data.get("id"), str):
            return data
        shape: UploadedShape | None = lookup(data["id"])
        if shape is None:
            raise _fail(("id",), f"there is no uploaded data set with id {data['id']!r}",
                        value=data["id"])
        data = dict(data)
        for name in _UPLOADED_SHAPE_FIELDS:
            actual = getattr(shape, name)
            given = data.get(name)
            if given is not None and given != actual:
                raise _fail((name,), f"data set {data['id']} has {name}={actual!r} but the "
                                     f"spec says {given!r}; leave it out to use the data set's",
                            value=given)
            data[name] = actual
        return data

    @model_validator(mode="after")
    def _shape_known(self) -> UploadedData:
        missing = [n for n in ("task", "n_samples", "n_features") if getattr(self, n) is None]
        if missing:
            raise _fail((missing[0],), f"the shape of uploaded data set {self.id} is unknown "
                                       "here: submit the spec to the server that holds it, or "
                                       "give task, n_samples and n_features")
        if self.task == "classification" and self.n_classes is None:
            raise _fail(("n_classes",), "a classification data set needs n_classes")
        if self.task == "regression":
            self.n_classes = None
            if self.n_targets is None:
                self.n_targets = 1
        else:
            self.n_targets = 1
        return self

    def attach(self, X: Any, y: Any) -> None:
        """Hand over the data set's arrays: float ``X`` (n_samples, n_features) and int labels
        (n,) or float targets (n, n_targets); their shapes must match the spec's."""
        if X.shape != (self.n_samples, self.n_features) or len(y) != self.n_samples:
            raise ValueError(f"uploaded data set {self.id}: arrays of shape {X.shape} / "
                             f"{y.shape} do not match the spec's ({self.n_samples}, "
                             f"{self.n_features})")
        self._arrays = (X, y)

    def arrays(self) -> tuple[Any, Any]:
        """The attached ``(X, y)``; a clear error when nobody attached them."""
        if self._arrays is None:
            raise RuntimeError(f"uploaded data set {self.id} was not loaded: the server "
                               "attaches its arrays (UploadedData.attach) before training")
        return self._arrays


DataSpec = Annotated[SyntheticData | InlineData | BuiltinData | UploadedData,
                     Field(discriminator="source")]


@dataclass(frozen=True)
class DataShape:
    """What the data spec implies, without generating anything."""

    task: Task
    n_samples: int
    n_features: int
    n_classes: int | None
    n_outputs_regression: int = 1


def data_shape(data: SyntheticData | InlineData | BuiltinData | UploadedData) -> DataShape:
    """Task, sample count, input width and class count implied by a data spec."""
    if isinstance(data, SyntheticData):
        meta = SYNTHETIC_DATASETS[data.name]
        assert data.n_features is not None
        return DataShape(meta["task"], data.n_samples, data.n_features, data.n_classes)
    if isinstance(data, InlineData):
        return DataShape(data.task, len(data.X), len(data.X[0]), data.n_classes,
                         data.n_outputs if data.task == "regression" else 1)
    if isinstance(data, UploadedData):
        assert data.task is not None and data.n_samples is not None
        assert data.n_features is not None  # checked by the model's validator
        return DataShape(data.task, data.n_samples, data.n_features, data.n_classes,
                         data.n_targets or 1)
    meta = BUILTIN_DATASETS[data.name]
    return DataShape(meta["task"], meta["n_samples"], meta["n_features"], meta["n_classes"])


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

Activation = Literal[
    "relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "softplus", "gelu", "linear"
]
ACTIVATIONS: tuple[str, ...] = (
    "relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "softplus", "gelu", "linear"
)

_BIAS = Field(0.0, description="Constant initial value of the biases.")


class _InitBase(_FloatsAcceptInts):
    bias: float = _BIAS


class XavierUniform(_InitBase):
    """Glorot & Bengio (2010): U(-a, a), a = gain*sqrt(6/(fan_in+fan_out)); gain from the activation."""

    scheme: Literal["xavier_uniform"]


class XavierNormal(_InitBase):
    """Glorot & Bengio (2010): N(0, gain^2 * 2/(fan_in+fan_out)); gain from the activation."""

    scheme: Literal["xavier_normal"]


class HeUniform(_InitBase):
    """He et al. (2015): U(-a, a), a = sqrt(2)*sqrt(3/fan_in) (ReLU gain, fan_in)."""

    scheme: Literal["he_uniform"]


class HeNormal(_InitBase):
    """He et al. (2015): N(0, 2/fan_in) (ReLU gain, fan_in)."""

    scheme: Literal["he_normal"]


class LecunNormal(_InitBase):
    """LeCun: N(0, 1/fan_in) (the SELU initialisation)."""

    scheme: Literal["lecun_normal"]


class Orthogonal(_InitBase):
    """Saxe et al. (2014): a (semi-)orthogonal matrix times the gain."""

    scheme: Literal["orthogonal"]
    gain: float = Field(1.0, gt=0, description="Multiplier of the orthogonal matrix.")


class NormalInit(_InitBase):
    """N(0, std^2), whatever the layer size: large std explodes deep nets at step 0."""

    scheme: Literal["normal"]
    std: float = Field(0.01, gt=0, description="Standard deviation.", examples=[0.01, 1.0])


class UniformInit(_InitBase):
    """U(-scale, scale), whatever the layer size."""

    scheme: Literal["uniform"]
    scale: float = Field(0.05, gt=0, description="Half-width of the interval.")


InitSpec = Annotated[
    XavierUniform | XavierNormal | HeUniform | HeNormal | LecunNormal | Orthogonal
    | NormalInit | UniformInit,
    Field(discriminator="scheme"),
]
INIT_SCHEMES: tuple[str, ...] = (
    "xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "lecun_normal", "orthogonal",
    "normal", "uniform",
)


class HiddenLayer(_Strict):
    """One hidden layer: Linear -> (BatchNorm) -> activation."""

    units: int = Field(64, ge=1, description="Width of the layer.")
    activation: Activation = Field("relu", description="Nonlinearity after the layer.")
    batch_norm: bool = Field(False, description="Batch normalisation between Linear and activation.")
    init: InitSpec | None = Field(
        None, description="Initialisation of this layer (null: `model.init`)."
    )


def _default_hidden() -> list[HiddenLayer]:
    return [HiddenLayer(units=64, activation="relu"), HiddenLayer(units=64, activation="relu")]


class ModelSpec(_Strict):
    """A multi-layer perceptron; the output layer is linear and its width follows from the data."""

    hidden: list[HiddenLayer] = Field(
        default=_default_hidden(),
        description="Hidden layers in order (may be empty: a linear model).",
    )
    init: InitSpec = Field(
        default=HeNormal(scheme="he_normal"),
        description="Weight initialisation for every layer without its own `init`, and for the "
                    "output layer.",
    )


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------

_LR_DESC = "Learning rate (> 0)."


class SGD(_FloatsAcceptInts):
    """torch.optim.SGD: momentum with dampening 0, optional Nesterov, L2 weight decay."""

    name: Literal["sgd"]
    lr: float = Field(0.01, gt=0, description=_LR_DESC, examples=[0.01, 0.1])
    momentum: float = Field(0.0, ge=0, lt=1, description="Momentum factor.")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGD:
        if self.nesterov and self.momentum <= 0:
            raise _fail(("nesterov",), "nesterov=true requires momentum > 0")
        return self


class Adam(_FloatsAcceptInts):
    """torch.optim.Adam (Kingma & Ba 2015), L2 weight decay added to the gradient."""

    name: Literal["adam"]
    lr: float = Field(0.001, gt=0, description=_LR_DESC)
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Second-moment decay.")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")


class AdamW(_FloatsAcceptInts):
    """torch.optim.AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""

    name: Literal["adamw"]
    lr: float = Field(0.001, gt=0, description=_LR_DESC)
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Second-moment decay.")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay.")


class RMSprop(_FloatsAcceptInts):
    """torch.optim.RMSprop (Hinton 2012), alpha 0.99."""

    name: Literal["rmsprop"]
    lr: float = Field(0.01, gt=0, description=_LR_DESC)
    alpha: float = Field(0.99, ge=0, lt=1, description="Smoothing constant.")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    momentum: float = Field(0.0, ge=0, lt=1, description="Momentum factor.")
    centered: bool = Field(False, description="Normalise by the estimated variance.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")


class Adagrad(_FloatsAcceptInts):
    """torch.optim.Adagrad (Duchi et al. 2011)."""

    name: Literal["adagrad"]
    lr: float = Field(0.01, gt=0, description=_LR_DESC)
    lr_decay: float = Field(0.0, ge=0, description="Learning-rate decay.")
    eps: float = Field(1e-10, gt=0, description="Denominator epsilon.")
    initial_accumulator_value: float = Field(0.0, ge=0, description="Initial sum of squares.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")


OptimizerSpec = Annotated[SGD | Adam | AdamW | RMSprop | Adagrad, Field(discriminator="name")]


class ConstantSchedule(_Strict):
    """The learning rate stays at the optimizer's `lr`."""

    name: Literal["constant"]


class StepSchedule(_FloatsAcceptInts):
    """torch StepLR over optimizer steps: lr * gamma ** (step // step_size)."""

    name: Literal["step"]
    step_size: int = Field(100, ge=1, description="Steps between decays.")
    gamma: float = Field(0.1, gt=0, description="Decay factor.")


class ExponentialSchedule(_FloatsAcceptInts):
    """torch ExponentialLR over optimizer steps: lr * gamma ** step."""

    name: Literal["exponential"]
    gamma: float = Field(0.999, gt=0, description="Decay factor per step.")


class CosineSchedule(_FloatsAcceptInts):
    """torch CosineAnnealingLR over steps, optionally after a linear warmup."""

    name: Literal["cosine"]
    t_max: int | None = Field(None, ge=1, description="Steps of one half-period (null: all steps).")
    eta_min: float = Field(0.0, ge=0, description="Minimum learning rate.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps before the cosine.")


class LinearWarmupSchedule(_FloatsAcceptInts):
    """torch LinearLR: from start_factor*lr to lr over warmup_steps, then constant."""

    name: Literal["linear_warmup"]
    warmup_steps: int = Field(100, ge=1, description="Length of the warmup.")
    start_factor: float = Field(0.01, gt=0, le=1, description="Initial multiple of lr.")


ScheduleSpec = Annotated[
    ConstantSchedule | StepSchedule | ExponentialSchedule | CosineSchedule | LinearWarmupSchedule,
    Field(discriminator="name"),
]


class NoClipping(_Strict):
    """No clipping (the recorded norms are still the pre-clip norms)."""

    mode: Literal["none"]


class GlobalNormClipping(_FloatsAcceptInts):
    """torch.nn.utils.clip_grad_norm_: scale all gradients by min(1, max_norm/(total+1e-6))."""

    mode: Literal["global_norm"]
    max_norm: float = Field(1.0, gt=0, description="Largest allowed global L2 norm.")


class ValueClipping(_FloatsAcceptInts):
    """torch.nn.utils.clip_grad_value_: clamp every gradient element into [-clip_value, clip_value]."""

    mode: Literal["value"]
    clip_value: float = Field(1.0, gt=0, description="Largest allowed absolute element.")


class LayerNormClipping(_FloatsAcceptInts):
    """clip_grad_norm_ applied to each layer's parameters separately."""

    mode: Literal["layer_norm"]
    max_norm: float = Field(1.0, gt=0, description="Largest allowed L2 norm per layer.")


class AdaptiveClipping(_FloatsAcceptInts):
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets)."""

    mode: Literal["adaptive"]
    clip_factor: float = Field(0.01, gt=0, description="Largest gradient/weight norm ratio per unit.")
    eps: float = Field(1e-3, gt=0, description="Floor on the weight norm.")


ClippingSpec = Annotated[
    NoClipping | GlobalNormClipping | ValueClipping | LayerNormClipping | AdaptiveClipping,
    Field(discriminator="mode"),
]


class TrainingOptions(_FloatsAcceptInts):
    """How long and in what batches to train."""

    epochs: int = Field(20, ge=1, description="Passes over the training split.")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step.")
    shuffle: bool = Field(True, description="Reshuffle the training split every epoch (seeded).")
    validation_split: float = Field(
        0.2, ge=0, lt=1, description="Fraction held out for validation loss/accuracy per epoch."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (null: epochs decide)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1,
        description="Stop (`early_stop`) when validation loss has not improved for this many "
                    "epochs (null: never).",
    )


class MonitorSpec(_Strict):
    """What is recorded and watched."""

    record_every: int = Field(
        1, ge=1,
        description="Emit every n-th step's record; the first and last step and every step "
                    "with a non-finite value are always emitted.",
    )
    stop_on_explosion: bool = Field(
        True,
        description="Stop training (stop_reason `explosion`) as soon as the online monitor "
                    "confirms runaway gradient growth.",
    )
    stop_on_non_finite: bool = Field(
        True, description="Stop (stop_reason `non_finite`) at the first NaN/Inf loss, "
                          "gradient or weight: nothing useful is computed after it."
    )
    activation_stats: bool = Field(
        True, description="Record per-layer activation mean/std, dead and saturated fractions."
    )


NotifyEvent = Literal["job.succeeded", "job.failed", "job.cancelled", "diagnosis.exploding",
                      "diagnosis.final"]


class NotifySpec(_Strict):
    """A webhook for this job only (same deliveries as ``POST /v1/webhooks``)."""

    url: str = Field(
        min_length=1, max_length=2000,
        description="http(s) URL that receives this job's events, signed with a secret the "
                    "job's creation response returns once (`notify_secret`).")
    events: list[NotifyEvent] = Field(
        ["diagnosis.exploding", "diagnosis.final", "job.succeeded", "job.failed",
         "job.cancelled"], min_length=1, description="Events to deliver.")


# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------

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
