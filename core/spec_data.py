"""The ``data`` part of the spec: synthetic generators, inline data, bundled data sets and
uploaded data sets, and :func:`data_shape` (what a data spec implies, without generating
anything)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from core.spec_base import SpecLimits, _fail, _FloatsAcceptInts, _lax_float, _limit, _Strict

__all__ = [
    "BUILTIN_DATASETS",
    "SYNTHETIC_DATASETS",
    "BuiltinData",
    "BuiltinName",
    "DataShape",
    "DataSpec",
    "InlineData",
    "SyntheticData",
    "SyntheticName",
    "Task",
    "UploadedData",
    "UploadedShape",
    "data_shape",
]

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
