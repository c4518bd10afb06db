"""core's side of uploaded data: the spec learns the data set's shape from the server's
lookup, and the trainer takes the arrays handed over with ``UploadedData.attach``."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from core import Trainer
from core.data import load_dataset
from core.spec import TrainingSpec, UploadedData, UploadedShape

SHAPE = UploadedShape(task="regression", n_samples=50, n_features=3, n_classes=None,
                      n_targets=2)


def lookup(dataset_id: str) -> UploadedShape | None:
    return SHAPE if dataset_id == "d1" else None


def _spec(data: dict[str, object], **extra: object) -> TrainingSpec:
    return TrainingSpec.model_validate({"data": {"source": "uploaded", **data}, **extra},
                                       context={"uploaded": lookup})


def test_the_server_lookup_fills_in_the_shape_and_the_layers_follow() -> None:
    spec = _spec({"id": "d1"}, model={"hidden": [{"units": 8}]})
    assert isinstance(spec.data, UploadedData)
    assert (spec.data.task, spec.data.n_samples, spec.data.n_targets) == ("regression", 50, 2)
    assert spec.layer_sizes() == [3, 8, 2] and spec.loss == "mse"
    # the echoed spec is self-contained: it validates again without the lookup
    again = TrainingSpec.model_validate(spec.model_dump(mode="json"))
    assert again.layer_sizes() == [3, 8, 2]


def test_unknown_ids_and_disagreeing_fields_are_named() -> None:
    with pytest.raises(ValidationError, match="no uploaded data set with id 'zz'"):
        _spec({"id": "zz"})
    with pytest.raises(ValidationError, match="n_features=3 but the spec says 4"):
        _spec({"id": "d1", "n_features": 4})
    with pytest.raises(ValidationError, match="shape of uploaded data set d1 is unknown"):
        TrainingSpec.model_validate({"data": {"source": "uploaded", "id": "d1"}})
    with pytest.raises(ValidationError, match="id"):
        _spec({"id": "../etc"})


def test_training_uses_the_attached_arrays_and_refuses_without_them() -> None:
    spec = _spec({"id": "d1", "standardize": True}, training={"epochs": 2, "batch_size": 10})
    with pytest.raises(RuntimeError, match="was not loaded"):
        load_dataset(spec, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    with pytest.raises(ValueError, match="do not match"):
        spec.data.attach(X[:, :2], Y)  # type: ignore[union-attr]
    spec.data.attach(X, Y)  # type: ignore[union-attr]
    ds = load_dataset(spec, np.random.default_rng(0))
    assert ds.X_train.shape == (40, 3) and ds.y_train.shape == (40, 2)
    assert np.allclose(ds.X_train.mean(axis=0), 0)  # standardised with training statistics
    assert X.std() != 1.0  # the attached arrays themselves are untouched
    result = Trainer(spec).run(None)
    assert result.steps_completed == 2 * 4
