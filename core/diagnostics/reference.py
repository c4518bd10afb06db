"""Reference levels a run is judged against: the chance-level loss and the data's scale.

The *chance-level loss* is what the best constant prediction scores on the training split:
the entropy of the class frequencies for cross-entropy and BCE, the mean target variance for
MSE. A loss that stays there is not learning, whatever its gradients do. Both come from
regenerating the training data from the spec (deterministic: the trainer draws the data first
from its seeded generator), cached per spec. An ``uploaded`` spec is measured only once its
arrays are attached (core never reads the server's storage): a server that diagnoses without
them passes the scale it measured (:func:`scale_key` names what it depends on).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from core.data import load_dataset
from core.spec import TrainingSpec, UploadedData

__all__ = ["DataScale", "data_scale", "scale_key"]

_SCALE_FIELDS = {"seed", "dtype", "data", "loss", "training"}


@dataclass(frozen=True)
class DataScale:
    """Scale of the training data as the network sees it, and the chance-level loss."""

    x_std: float  # RMS of the inputs around 0 (features pooled)
    x_feature_std_max: float
    y_std: float | None  # regression targets' RMS around 0 (None for classification)
    chance_loss: float | None
    standardized: bool


def data_scale(spec: TrainingSpec) -> DataScale | None:
    """The data's scale and chance-level loss for ``spec``, or None if the data cannot be built."""
    try:
        if isinstance(spec.data, UploadedData):  # its arrays live on this spec object only
            return _measure(spec)
        return _data_scale(scale_key(spec))
    except Exception:
        return None


def scale_key(spec: TrainingSpec) -> str:
    """The spec fields the data's scale depends on, as JSON (for an uploaded data set, its id
    stands for its arrays: equal keys, equal scales)."""
    return spec.model_dump_json(include=_SCALE_FIELDS)


@functools.lru_cache(maxsize=64)
def _data_scale(key: str) -> DataScale:
    return _measure(TrainingSpec.model_validate(json.loads(key)))


def _measure(spec: TrainingSpec) -> DataScale:
    ds = load_dataset(spec, np.random.default_rng(spec.seed))
    with np.errstate(all="ignore"):
        X = ds.X_train.astype(np.float64)
        x_std = float(np.sqrt(np.mean(np.square(X))))
        x_feature_std_max = float(X.std(axis=0).max()) if X.size else 0.0
        y_std: float | None = None
        chance: float | None = None
        if ds.task == "regression":
            Y = ds.y_train.astype(np.float64)
            y_std = float(np.sqrt(np.mean(np.square(Y))))
            chance = float(np.mean(Y.var(axis=0)))
        else:
            counts = np.bincount(ds.y_train.astype(np.int64))
            p = counts[counts > 0] / counts.sum()
            entropy = float(-(p * np.log(p)).sum())
            if spec.loss == "mse":  # one-hot targets: variance of each indicator
                chance = float(np.mean(p * (1 - p))) if len(p) else None
            else:
                chance = entropy
    return DataScale(x_std, x_feature_std_max, y_std,
                     chance if chance is not None and math.isfinite(chance) else None,
                     ds.standardized)
