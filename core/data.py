"""Training data: synthetic generators, bundled real data sets, inline and uploaded data.

:func:`load_dataset` turns a spec's ``data`` into arrays, always in the same order:

1. build the examples in float64 (generate, read the bundled file, take the body's arrays, or
   the arrays the server attached to an ``uploaded`` spec, see :meth:`UploadedData.attach`);
2. shuffle them with one seeded permutation;
3. split: the LAST ``floor(n * validation_split)`` permuted examples are the validation split,
   so ``len(X_train) == spec.n_train_samples()``;
4. standardise, only when ``data.standardize`` is set, with TRAINING-split statistics (inputs,
   and targets of regression data);
5. cast to ``spec.dtype``.

Data are otherwise used as given: badly scaled inputs or targets stay badly scaled, because
they are a cause of gradient explosion that the diagnosis must be able to show.

Every random draw comes from the caller's :class:`numpy.random.Generator` (the trainer's single
generator), in a fixed order: the generator's draws, then one permutation.

The synthetic generators are :mod:`core.synthetic` (:func:`make_synthetic`, re-exported here).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from core.spec import (
    BUILTIN_DATASETS,
    SYNTHETIC_DATASETS,
    BuiltinData,
    InlineData,
    SyntheticData,
    Task,
    TrainingSpec,
    UploadedData,
    data_shape,
)
from core.synthetic import make_synthetic

__all__ = ["Dataset", "dataset_catalog", "load_builtin", "load_dataset", "make_synthetic"]

FloatArray = npt.NDArray[np.float64]


@dataclass
class Dataset:
    """Train/validation arrays ready for the network, plus what was done to them.

    Attributes
    ----------
    X_train, X_val : ndarray of shape ``(n, n_features)``, dtype ``spec.dtype``, C-contiguous.
        ``X_val`` has 0 rows when ``validation_split`` is 0.
    y_train, y_val : int64 labels of shape ``(n,)`` (classification) or floats of
        ``spec.dtype`` and shape ``(n, n_outputs)`` (regression).
    n_outputs : target width: ``n_classes`` for classification (the output layer's width also
        depends on the loss, see ``TrainingSpec.output_units``), ``k`` for regression.
    x_mean, x_std, y_mean, y_std : float64 statistics of the training split that were applied
        as ``(v - mean) / std``; ``None`` when nothing was standardised (``y_*`` are always
        ``None`` for classification). A column that is constant on the training split has
        ``std`` 1: it is centred but not scaled.
    """

    X_train: npt.NDArray[np.floating[Any]]
    y_train: npt.NDArray[Any]
    X_val: npt.NDArray[np.floating[Any]]
    y_val: npt.NDArray[Any]
    task: Task
    n_features: int
    n_classes: int | None
    n_outputs: int
    name: str
    source: str
    x_mean: FloatArray | None = None
    x_std: FloatArray | None = None
    y_mean: FloatArray | None = None
    y_std: FloatArray | None = None
    feature_names: list[str] | None = None

    @property
    def standardized(self) -> bool:
        return self.x_mean is not None

    def describe(self) -> dict[str, Any]:
        """Scale summary of the training split as the network sees it (JSON-ready floats).

        ``x_abs_mean`` / ``x_abs_max`` / ``x_std`` are over all input values;
        ``x_feature_std_min`` / ``_max`` show how unevenly the features are scaled; ``y_*`` give
        the regression target's scale (``None`` for classification), ``class_counts`` the
        training labels per class (``None`` for regression).
        """
        # Absurd scales (inf after a float32 cast, squares beyond 1e308) are what this summary
        # exists to show: report inf/NaN rather than warn.
        with np.errstate(all="ignore"):
            return self._describe()

    def _describe(self) -> dict[str, Any]:
        X = self.X_train.astype(np.float64)
        feature_std = X.std(axis=0)
        summary: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "n_train": int(X.shape[0]),
            "n_val": int(self.X_val.shape[0]),
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "n_outputs": self.n_outputs,
            "standardized": self.standardized,
            "x_abs_mean": float(np.abs(X).mean()),
            "x_abs_max": float(np.abs(X).max()),
            "x_std": float(X.std()),
            "x_feature_std_min": float(feature_std.min()),
            "x_feature_std_max": float(feature_std.max()),
            "y_mean": None,
            "y_std": None,
            "y_abs_max": None,
            "class_counts": None,
        }
        if self.task == "regression":
            Y = self.y_train.astype(np.float64)
            summary.update(y_mean=float(Y.mean()), y_std=float(Y.std()),
                           y_abs_max=float(np.abs(Y).max()))
        else:
            assert self.n_classes is not None
            counts = np.bincount(self.y_train, minlength=self.n_classes)
            summary["class_counts"] = [int(c) for c in counts]
        return summary


# --------------------------------------------------------------------------------------------
# Bundled real data sets (core/datasets/*.npz, see core/datasets/README.md)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)  # one entry per bundled set is enough
def _read_builtin(name: str) -> tuple[FloatArray, npt.NDArray[Any], tuple[str, ...]]:
    """The bundled file's arrays (read-only: callers get copies from :func:`load_builtin`)."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown builtin data set {name!r}; one of {sorted(BUILTIN_DATASETS)}")
    path = resources.files("core").joinpath("datasets", f"{name}.npz")
    with path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        X = np.ascontiguousarray(npz["X"], dtype=np.float64)
        raw_y = npz["y"]
        feature_names = tuple(str(s) for s in npz["feature_names"])
    y: npt.NDArray[Any]
    if BUILTIN_DATASETS[name]["task"] == "regression":
        y = np.asarray(raw_y, dtype=np.float64).reshape(len(raw_y), -1)
    else:
        y = np.asarray(raw_y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y, feature_names


def load_builtin(name: str) -> tuple[FloatArray, npt.NDArray[Any]]:
    """Copies of a bundled data set in file order: float64 ``X`` (n, d) and its targets.

    Targets are int64 labels (n,) or, for regression (``diabetes``), float64 of shape (n, 1).
    Files are read once per process; no network access.
    """
    X, y, _ = _read_builtin(name)
    return X.copy(), y.copy()


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def _standardize(train: FloatArray, val: FloatArray) -> tuple[FloatArray, FloatArray,
                                                            FloatArray, FloatArray]:
    """``(train', val', mean, std)`` scaled with the training split's mean and (biased) std."""
    # Statistics of train / max|train| rescaled: squares of values near 1e308 must not overflow.
    peak = np.abs(train).max(axis=0)
    peak[peak == 0] = 1.0
    unit = train / peak
    mean = unit.mean(axis=0) * peak
    std = unit.std(axis=0) * peak
    std[np.ptp(train, axis=0) == 0] = 1.0  # constant column: centre it, don't divide by ~0
    return (train - mean) / std, (val - mean) / std, mean, std


def _as_dtype(a: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    # Values beyond float32's range become +-inf, like any float32 computation would make them:
    # non-finite numbers are data here, the diagnosis reports them.
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(a, dtype=dtype)


def load_dataset(spec: TrainingSpec, rng: np.random.Generator) -> Dataset:
    """The spec's data, shuffled, split and (if asked) standardised, in ``spec.dtype``.

    Parameters
    ----------
    spec : the validated training spec; uses ``spec.data``, ``spec.dtype`` and
        ``spec.training.validation_split`` (through ``spec.n_train_samples()``).
    rng : the trainer's generator; every random draw of this function comes from it.
    """
    data = spec.data
    shape = data_shape(data)
    feature_names: list[str] | None = None
    y: npt.NDArray[Any]
    if isinstance(data, SyntheticData):
        X, y = make_synthetic(data, rng)
    elif isinstance(data, BuiltinData):
        X, y = load_builtin(data.name)
        feature_names = list(_read_builtin(data.name)[2])
    elif isinstance(data, InlineData):
        X = np.asarray(data.X, dtype=np.float64)
        if data.task == "classification":
            y = np.asarray(data.y, dtype=np.int64)
        else:
            y = np.asarray(data.y, dtype=np.float64).reshape(len(data.y), -1)
    elif isinstance(data, UploadedData):
        raw_X, raw_y = data.arrays()
        X = np.array(raw_X, dtype=np.float64)  # a copy: the attached arrays stay untouched
        if data.task == "classification":
            y = np.array(raw_y, dtype=np.int64)
        else:
            y = np.array(raw_y, dtype=np.float64).reshape(len(raw_y), -1)
    else:  # pragma: no cover
        raise TypeError(f"unsupported data spec {type(data).__name__}")
    if X.shape != (shape.n_samples, shape.n_features):
        raise RuntimeError(
            f"data set {getattr(data, 'name', data.source)!r} has shape {X.shape} but the spec "
            f"metadata says ({shape.n_samples}, {shape.n_features}): fix core.spec metadata"
        )

    order = rng.permutation(shape.n_samples)
    X, y = X[order], y[order]
    n_train = spec.n_train_samples()
    X_train, X_val, y_train, y_val = X[:n_train], X[n_train:], y[:n_train], y[n_train:]

    x_mean = x_std = y_mean = y_std = None
    if data.standardize:
        X_train, X_val, x_mean, x_std = _standardize(X_train, X_val)
        if shape.task == "regression":
            y_train, y_val, y_mean, y_std = _standardize(y_train, y_val)

    dtype = np.dtype(spec.dtype)
    y_dtype = np.dtype(np.int64) if shape.task == "classification" else dtype
    return Dataset(
        X_train=_as_dtype(X_train, dtype),
        y_train=_as_dtype(y_train, y_dtype),
        X_val=_as_dtype(X_val, dtype),
        y_val=_as_dtype(y_val, y_dtype),
        task=shape.task,
        n_features=shape.n_features,
        n_classes=shape.n_classes,
        n_outputs=shape.n_classes if shape.n_classes is not None else int(y.shape[1]),
        name=getattr(data, "name", data.source),
        source=data.source,
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
        feature_names=feature_names,
    )


def dataset_catalog() -> list[dict[str, Any]]:
    """One entry per named data set (synthetic ones with their default parameters)."""
    catalog: list[dict[str, Any]] = []
    for name, meta in SYNTHETIC_DATASETS.items():
        defaults = SyntheticData.model_validate({"source": "synthetic", "name": name})
        catalog.append({
            "name": name, "source": "synthetic", "task": meta["task"],
            "n_samples": defaults.n_samples, "n_features": defaults.n_features,
            "n_classes": defaults.n_classes, "description": meta["description"],
        })
    for name, meta in BUILTIN_DATASETS.items():
        catalog.append({
            "name": name, "source": "builtin", "task": meta["task"],
            "n_samples": meta["n_samples"], "n_features": meta["n_features"],
            "n_classes": meta["n_classes"], "description": meta["description"],
        })
    return catalog
