"""core.spec.TrainingSpec: defaults, round trips, field-path errors and resource limits.

Every bad input must give a pydantic ``ValidationError`` (the API turns it into a 422) whose
error ``loc`` names the offending field, so a client can point at the mistake. Resource
limits are part of validation and are checked from the spec's shapes alone, before anything
is allocated.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import core
from core import SpecLimits, TrainingSpec

MINIMAL: dict[str, Any] = {"data": {"source": "synthetic", "name": "spirals"}}

# The example spec of DESIGN.md ("The spec, by example"), verbatim.
DESIGN_EXAMPLE: dict[str, Any] = {
    "name": "deep-relu-normal-init",
    "seed": 0,
    "dtype": "float64",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 600, "n_classes": 3,
             "noise": 0.2},
    "model": {
        "hidden": [{"units": 64, "activation": "relu"},
                   {"units": 64, "activation": "relu", "batch_norm": True}],
        "init": {"scheme": "normal", "std": 1.0},
    },
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "schedule": {"name": "constant"},
    "clipping": {"mode": "global_norm", "max_norm": 5.0},
    "training": {"epochs": 20, "batch_size": 32, "shuffle": True, "validation_split": 0.2},
    "monitor": {"record_every": 1, "stop_on_explosion": True},
}

INLINE_CLS: dict[str, Any] = {"source": "inline", "task": "classification",
                              "X": [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]],
                              "y": [0, 1, 1, 0]}
INLINE_REG: dict[str, Any] = {"source": "inline", "task": "regression",
                              "X": [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]],
                              "y": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}


def spec_with(*, base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A deep copy of ``base`` (default MINIMAL) with top-level ``fields`` replaced."""
    out = copy.deepcopy(MINIMAL if base is None else base)
    out.update(copy.deepcopy(fields))
    return out


def validation_errors(body: Any, **kwargs: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        TrainingSpec.model_validate(body, **kwargs)
    return info.value.errors()


def is_subpath(path: tuple[str | int, ...], loc: tuple[str | int, ...]) -> bool:
    """``path`` occurs in ``loc`` in order, starting at the root.

    pydantic inserts the tag of a discriminated union into ``loc``
    (``("optimizer", "sgd", "lr")``), so the field path is a subsequence, not a prefix.
    """
    if not path or not loc or loc[0] != path[0]:
        return False
    it = iter(loc)
    return all(any(part == x for x in it) for part in path)


def assert_error_at(body: Any, path: tuple[str | int, ...], *, kind: str | None = None,
                    **kwargs: Any) -> list[dict[str, Any]]:
    """The body is rejected with at least one error located at ``path``; returns those."""
    errors = validation_errors(body, **kwargs)
    at = [e for e in errors if is_subpath(path, tuple(e["loc"]))]
    summary = [(e["type"], e["loc"], e["msg"]) for e in errors]
    assert at, f"no error located at {path}; got {summary}"
    if kind is not None:
        assert any(e["type"] == kind for e in at), f"no {kind!r} error at {path}: {summary}"
    return at


def test_is_subpath_helper() -> None:
    assert is_subpath(("optimizer", "lr"), ("optimizer", "sgd", "lr"))
    assert not is_subpath(("optimizer", "lr"), ("optimizer", "sgd"))
    assert not is_subpath(("lr",), ("optimizer", "sgd", "lr"))
    assert not is_subpath(("data", "X", 1), ("data", "inline", "X", 0))


# ---- the minimal spec, defaults and round trips ---------------------------------------------


def assert_every_field_present(model: BaseModel, dumped: Any, where: str = "spec") -> None:
    """Every declared field of every (nested) model appears in its JSON dump."""
    assert isinstance(dumped, dict), where
    assert set(dumped) == set(type(model).model_fields), where
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            assert_every_field_present(value, dumped[name], f"{where}.{name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    assert_every_field_present(item, dumped[name][i], f"{where}.{name}[{i}]")


def test_minimal_spec_is_complete_with_every_default_filled() -> None:
    spec = TrainingSpec.model_validate(MINIMAL)
    dumped = spec.model_dump(mode="json")
    assert_every_field_present(spec, dumped)
    # defaults that depend on the data are resolved, not left null
    assert dumped["loss"] == "cross_entropy"  # classification data -> cross_entropy
    data = dumped["data"]
    assert data["n_features"] == 2  # spirals are 2-D
    assert isinstance(data["n_classes"], int) and data["n_classes"] >= 2
    assert isinstance(data["noise"], float)
    assert isinstance(data["n_samples"], int)
    assert data["standardize"] is False  # data are used as given
    assert dumped["model"]["hidden"], "a default network has hidden layers"
    assert dumped["optimizer"]["name"] in {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
    assert isinstance(dumped["optimizer"]["lr"], float)
    assert isinstance(dumped["training"]["epochs"], int)
    assert isinstance(dumped["training"]["batch_size"], int)
    assert isinstance(dumped["monitor"]["record_every"], int)


def test_absent_optional_values_are_explicit_null() -> None:
    dumped = TrainingSpec.model_validate(MINIMAL).model_dump(mode="json")
    assert "name" in dumped and dumped["name"] is None
    assert "max_steps" in dumped["training"] and dumped["training"]["max_steps"] is None
    assert dumped["training"]["early_stopping_patience"] is None
    for layer in dumped["model"]["hidden"]:
        assert "init" in layer and layer["init"] is None


def test_regression_data_default_to_mse() -> None:
    spec = TrainingSpec.model_validate({"data": {"source": "synthetic", "name": "sine"}})
    assert spec.loss == "mse"
    assert spec.data.n_classes is None  # type: ignore[union-attr]


@pytest.mark.parametrize("body", [
    MINIMAL,
    DESIGN_EXAMPLE,
    spec_with(data=INLINE_CLS, loss="binary_cross_entropy",
              optimizer={"name": "adam", "lr": 0.01}, clipping={"mode": "value"}),
    spec_with(data=INLINE_REG, optimizer={"name": "adamw"},
              schedule={"name": "cosine", "warmup_steps": 2}),
    spec_with(data={"source": "builtin", "name": "iris", "standardize": True},
              optimizer={"name": "rmsprop", "momentum": 0.5, "centered": True},
              schedule={"name": "linear_warmup", "warmup_steps": 3},
              clipping={"mode": "adaptive", "clip_factor": 0.05}),
    spec_with(data={"source": "synthetic", "name": "blobs", "n_features": 5, "n_classes": 4},
              model={"hidden": [{"units": 3, "activation": "tanh",
                                 "init": {"scheme": "orthogonal", "gain": 2.0}}],
                     "init": {"scheme": "uniform", "scale": 0.1, "bias": 0.5}},
              optimizer={"name": "adagrad"}, schedule={"name": "step", "step_size": 5},
              clipping={"mode": "layer_norm", "max_norm": 2.0},
              training={"max_steps": 10, "early_stopping_patience": 3}),
], ids=["minimal", "design-example", "inline-cls", "inline-reg", "builtin", "blobs"])
def test_dumped_spec_revalidates_to_an_equal_spec(body: dict[str, Any]) -> None:
    spec = TrainingSpec.model_validate(body)
    dumped = spec.model_dump(mode="json")
    text = json.dumps(dumped, allow_nan=False)  # plain JSON: no NaN/Infinity tokens
    again = TrainingSpec.model_validate(json.loads(text))
    assert again == spec
    assert again.model_dump(mode="json") == dumped  # a fixed point: nothing left to fill in
    assert TrainingSpec.model_validate_json(text) == spec
    assert_every_field_present(spec, dumped)


def test_explicitly_given_values_survive_validation() -> None:
    dumped = TrainingSpec.model_validate(DESIGN_EXAMPLE).model_dump(mode="json")
    assert dumped["name"] == "deep-relu-normal-init"
    assert dumped["optimizer"] == {**dumped["optimizer"], "name": "sgd", "lr": 0.1,
                                   "momentum": 0.9}
    assert dumped["clipping"] == {"mode": "global_norm", "max_norm": 5.0}
    assert [h["batch_norm"] for h in dumped["model"]["hidden"]] == [False, True]
    assert dumped["model"]["init"]["std"] == 1.0


def test_every_default_is_visible_in_the_json_schema() -> None:
    schema = TrainingSpec.model_json_schema()
    models = {**schema["$defs"], "TrainingSpec": schema}
    missing = [f"{name}.{prop}"
               for name, model in models.items()
               for prop, sub in model.get("properties", {}).items()
               if prop not in model.get("required", []) and "default" not in sub]
    assert missing == []
    # and the advertised defaults are the ones validation fills in
    filled = TrainingSpec.model_validate(MINIMAL).model_dump(mode="json")
    for field in ("model", "optimizer", "schedule", "clipping", "training", "monitor"):
        assert schema["properties"][field]["default"] == filled[field], field


def test_json_integers_are_accepted_for_float_fields() -> None:
    spec = TrainingSpec.model_validate(spec_with(
        data={"source": "synthetic", "name": "linear", "noise": 0, "input_scale": 2,
              "target_scale": 3},
        optimizer={"name": "sgd", "lr": 1, "momentum": 0},
        clipping={"mode": "global_norm", "max_norm": 5},
        training={"validation_split": 0},
    ))
    for value, expected in [(spec.optimizer.lr, 1.0), (spec.data.noise, 0.0),  # type: ignore[union-attr]
                            (spec.data.input_scale, 2.0), (spec.data.target_scale, 3.0),  # type: ignore[union-attr]
                            (spec.clipping.max_norm, 5.0),  # type: ignore[union-attr]
                            (spec.training.validation_split, 0.0)]:
        assert type(value) is float and value == expected
    inline = TrainingSpec.model_validate(spec_with(data={
        "source": "inline", "task": "regression", "X": [[1, 2], [3, 4]], "y": [5, 6]}))
    assert inline.data.X == [[1.0, 2.0], [3.0, 4.0]]  # type: ignore[union-attr]
    assert all(type(v) is float for row in inline.data.X for v in row)  # type: ignore[union-attr]


def test_validation_split_may_leave_a_single_training_example() -> None:
    spec = TrainingSpec.model_validate(spec_with(
        data={"source": "synthetic", "name": "moons", "n_samples": 2},
        training={"validation_split": 0.99}))
    assert spec.n_train_samples() == 1


def test_max_steps_lets_a_long_epoch_count_through_the_step_limit() -> None:
    body = spec_with(training={"epochs": 1_000_000, "batch_size": 1, "max_steps": 1000})
    spec = TrainingSpec.model_validate(body)
    assert spec.total_steps() == 1000


# ---- bad input: the error names the field -----------------------------------------------------

HIDDEN = {"hidden": [{"units": 4}]}

BAD_INPUTS: list[tuple[str, dict[str, Any], tuple[str | int, ...]]] = [
    # unknown names
    ("unknown activation",
     spec_with(model={"hidden": [{"units": 4, "activation": "swish"}]}),
     ("model", "hidden", 0, "activation")),
    ("unknown optimizer", spec_with(optimizer={"name": "lamb", "lr": 0.1}), ("optimizer",)),
    ("unknown loss", spec_with(loss="hinge"), ("loss",)),
    ("unknown init scheme", spec_with(model={**HIDDEN, "init": {"scheme": "kaiming"}}),
     ("model", "init")),
    ("unknown per-layer init scheme",
     spec_with(model={"hidden": [{"units": 4, "init": {"scheme": "kaiming"}}]}),
     ("model", "hidden", 0, "init")),
    ("unknown clipping mode", spec_with(clipping={"mode": "clamp"}), ("clipping",)),
    ("unknown schedule", spec_with(schedule={"name": "one_cycle"}), ("schedule",)),
    ("unknown data source", {"data": {"source": "s3", "name": "spirals"}}, ("data",)),
    ("unknown synthetic generator", {"data": {"source": "synthetic", "name": "mnist"}},
     ("data", "name")),
    ("unknown builtin data set", {"data": {"source": "builtin", "name": "mnist"}},
     ("data", "name")),
    ("unknown dtype", spec_with(dtype="float16"), ("dtype",)),
    ("missing data", {"seed": 1}, ("data",)),
    ("missing optimizer name", spec_with(optimizer={"lr": 0.1}), ("optimizer",)),
    # extra=forbid, everywhere
    ("extra top-level field", spec_with(epochs=3), ("epochs",)),
    ("extra data field", {"data": {"source": "synthetic", "name": "spirals", "size": 3}},
     ("data", "size")),
    ("extra inline data field", spec_with(data={**INLINE_CLS, "weights": [1, 1, 1, 1]}),
     ("data", "weights")),
    ("extra model field", spec_with(model={**HIDDEN, "dropout": 0.5}), ("model", "dropout")),
    ("extra hidden-layer field", spec_with(model={"hidden": [{"units": 4, "dropout": 0.5}]}),
     ("model", "hidden", 0, "dropout")),
    ("extra init field", spec_with(model={"init": {"scheme": "he_normal", "std": 1.0}}),
     ("model", "init", "std")),
    ("extra optimizer field", spec_with(optimizer={"name": "sgd", "betas": [0.9, 0.99]}),
     ("optimizer", "betas")),
    ("extra schedule field", spec_with(schedule={"name": "constant", "gamma": 0.5}),
     ("schedule", "gamma")),
    ("extra clipping field", spec_with(clipping={"mode": "none", "max_norm": 1.0}),
     ("clipping", "max_norm")),
    ("extra training field", spec_with(training={"epoch": 3}), ("training", "epoch")),
    ("extra monitor field", spec_with(monitor={"record": 1}), ("monitor", "record")),
    # numbers out of range
    ("units 0", spec_with(model={"hidden": [{"units": 0}]}), ("model", "hidden", 0, "units")),
    ("units negative", spec_with(model={"hidden": [{"units": 4}, {"units": -3}]}),
     ("model", "hidden", 1, "units")),
    ("lr 0", spec_with(optimizer={"name": "sgd", "lr": 0.0}), ("optimizer", "lr")),
    ("lr negative", spec_with(optimizer={"name": "adam", "lr": -0.001}), ("optimizer", "lr")),
    ("lr NaN", spec_with(optimizer={"name": "sgd", "lr": math.nan}), ("optimizer", "lr")),
    ("lr Inf", spec_with(optimizer={"name": "adamw", "lr": math.inf}), ("optimizer", "lr")),
    ("lr -Inf", spec_with(optimizer={"name": "rmsprop", "lr": -math.inf}), ("optimizer", "lr")),
    ("max_norm NaN", spec_with(clipping={"mode": "global_norm", "max_norm": math.nan}),
     ("clipping", "max_norm")),
    ("epochs 0", spec_with(training={"epochs": 0}), ("training", "epochs")),
    ("batch_size 0", spec_with(training={"batch_size": 0}), ("training", "batch_size")),
    ("batch_size negative", spec_with(training={"batch_size": -8}), ("training", "batch_size")),
    ("record_every 0", spec_with(monitor={"record_every": 0}), ("monitor", "record_every")),
    ("seed negative", spec_with(seed=-1), ("seed",)),
    ("validation_split 1", spec_with(training={"validation_split": 1.0}),
     ("training", "validation_split")),
    ("validation_split int 1 (all data held out)", spec_with(training={"validation_split": 1}),
     ("training", "validation_split")),
    ("momentum 1", spec_with(optimizer={"name": "sgd", "momentum": 1.0}),
     ("optimizer", "momentum")),
    # strict types: no numeric strings, no booleans for numbers, no numbers for booleans
    ("lr as a numeric string", spec_with(optimizer={"name": "sgd", "lr": "0.1"}),
     ("optimizer", "lr")),
    ("units as a numeric string", spec_with(model={"hidden": [{"units": "4"}]}),
     ("model", "hidden", 0, "units")),
    ("units as a float", spec_with(model={"hidden": [{"units": 4.0}]}),
     ("model", "hidden", 0, "units")),
    ("epochs as a numeric string", spec_with(training={"epochs": "3"}), ("training", "epochs")),
    ("seed as a numeric string", spec_with(seed="1"), ("seed",)),
    ("noise as a numeric string",
     {"data": {"source": "synthetic", "name": "spirals", "noise": "0.1"}}, ("data", "noise")),
    ("inline X value as a string", spec_with(data={**INLINE_CLS, "X": [[0, 0], [0, "1"],
                                                                      [1, 0], [1, 1]]}),
     ("data", "X", 1, 1)),
    ("units as a boolean", spec_with(model={"hidden": [{"units": True}]}),
     ("model", "hidden", 0, "units")),
    ("epochs as a boolean", spec_with(training={"epochs": True}), ("training", "epochs")),
    ("seed as a boolean", spec_with(seed=False), ("seed",)),
    ("shuffle as 1", spec_with(training={"shuffle": 1}), ("training", "shuffle")),
    ("shuffle as 0", spec_with(training={"shuffle": 0}), ("training", "shuffle")),
    ("shuffle as 'yes'", spec_with(training={"shuffle": "yes"}), ("training", "shuffle")),
    ("batch_norm as 1", spec_with(model={"hidden": [{"units": 4, "batch_norm": 1}]}),
     ("model", "hidden", 0, "batch_norm")),
    ("standardize as 'true'",
     {"data": {"source": "synthetic", "name": "spirals", "standardize": "true"}},
     ("data", "standardize")),
    ("stop_on_explosion as 0", spec_with(monitor={"stop_on_explosion": 0}),
     ("monitor", "stop_on_explosion")),
    # inline data
    ("inline X ragged", spec_with(data={**INLINE_CLS, "X": [[0, 0], [0, 1], [1], [1, 1]]}),
     ("data", "X")),
    ("inline X empty rows", spec_with(data={**INLINE_REG, "X": [[], [], []]}), ("data", "X")),
    ("inline X too short", spec_with(data={**INLINE_REG, "X": [[1.0]], "y": [1.0]}),
     ("data", "X")),
    ("inline y longer than X", spec_with(data={**INLINE_CLS, "y": [0, 1, 1, 0, 1]}),
     ("data", "y")),
    ("inline y shorter than X", spec_with(data={**INLINE_REG, "y": [[1.0, 2.0]]}),
     ("data", "y")),
    ("inline X NaN", spec_with(data={**INLINE_CLS, "X": [[0, 0], [0, math.nan], [1, 0],
                                                        [1, 1]]}), ("data", "X", 1, 1)),
    ("inline X Inf", spec_with(data={**INLINE_REG, "X": [[0, 1], [1, 2], [math.inf, 3]]}),
     ("data", "X", 2, 0)),
    ("inline y NaN", spec_with(data={**INLINE_REG, "y": [1.0, math.nan, 2.0]}), ("data", "y")),
    ("inline y row -Inf", spec_with(data={**INLINE_REG, "y": [[1.0, 2.0], [3.0, -math.inf],
                                                             [5.0, 6.0]]}), ("data", "y")),
    ("inline regression y ragged", spec_with(data={**INLINE_REG, "y": [[1.0, 2.0], [3.0],
                                                                      [5.0, 6.0]]}),
     ("data", "y")),
    ("class labels negative", spec_with(data={**INLINE_CLS, "y": [0, 1, -1, 0]}),
     ("data", "y")),
    ("class labels non-integer", spec_with(data={**INLINE_CLS, "y": [0, 1, 0.5, 0]}),
     ("data", "y")),
    ("class labels integral floats", spec_with(data={**INLINE_CLS, "y": [0.0, 1.0, 1.0, 0.0]}),
     ("data", "y")),
    ("class labels as strings", spec_with(data={**INLINE_CLS, "y": ["a", "b", "b", "a"]}),
     ("data", "y")),
    ("single-class labels", spec_with(data={**INLINE_CLS, "y": [1, 1, 1, 1]}), ("data", "y")),
    ("unknown inline task", spec_with(data={**INLINE_CLS, "task": "ranking"}),
     ("data", "task")),
    # losses that do not fit the data
    ("cross_entropy on a regression target",
     {"data": {"source": "synthetic", "name": "linear"}, "loss": "cross_entropy"}, ("loss",)),
    ("binary_cross_entropy on a regression target",
     {"data": {"source": "synthetic", "name": "sine"}, "loss": "binary_cross_entropy"},
     ("loss",)),
    ("cross_entropy on inline regression data",
     spec_with(data=INLINE_REG, loss="cross_entropy"), ("loss",)),
    ("binary_cross_entropy on 3 classes", spec_with(loss="binary_cross_entropy"), ("loss",)),
    ("binary_cross_entropy on 3 inline classes",
     spec_with(data={**INLINE_CLS, "y": [0, 1, 2, 0]}, loss="binary_cross_entropy"),
     ("loss",)),
    # generator parameters that do not apply
    ("moons with 3 classes", {"data": {"source": "synthetic", "name": "moons", "n_classes": 3}},
     ("data", "n_classes")),
    ("n_features on spirals",
     {"data": {"source": "synthetic", "name": "spirals", "n_features": 3}},
     ("data", "n_features")),
    ("n_classes on a regression generator",
     {"data": {"source": "synthetic", "name": "linear", "n_classes": 2}}, ("data", "n_classes")),
    ("n_samples 0", {"data": {"source": "synthetic", "name": "spirals", "n_samples": 0}},
     ("data", "n_samples")),
    # optimizer consistency
    ("nesterov without momentum", spec_with(optimizer={"name": "sgd", "nesterov": True}),
     ("optimizer", "nesterov")),
]


@pytest.mark.parametrize(("body", "path"), [(b, p) for _, b, p in BAD_INPUTS],
                         ids=[name for name, _, _ in BAD_INPUTS])
def test_bad_input_is_a_validation_error_naming_the_field(body: dict[str, Any],
                                                          path: tuple[str | int, ...]) -> None:
    errors = assert_error_at(body, path)
    for e in errors:
        assert e["msg"], "every error says what is wrong"


@pytest.mark.parametrize(("field_body", "path", "allowed"), [
    (spec_with(model={"hidden": [{"units": 4, "activation": "swish"}]}),
     ("model", "hidden", 0, "activation"), ["relu", "tanh", "gelu"]),
    (spec_with(optimizer={"name": "lamb"}), ("optimizer",), ["sgd", "adam", "adagrad"]),
    (spec_with(loss="hinge"), ("loss",), ["mse", "cross_entropy", "binary_cross_entropy"]),
    (spec_with(clipping={"mode": "clamp"}), ("clipping",), ["global_norm", "value"]),
    (spec_with(schedule={"name": "one_cycle"}), ("schedule",), ["constant", "cosine"]),
    ({"data": {"source": "s3"}}, ("data",), ["synthetic", "inline", "builtin"]),
    (spec_with(model={"init": {"scheme": "kaiming"}}), ("model", "init"),
     ["he_normal", "xavier_uniform"]),
], ids=["activation", "optimizer", "loss", "clipping", "schedule", "source", "init"])
def test_unknown_name_errors_say_what_is_allowed(field_body: dict[str, Any],
                                                 path: tuple[str | int, ...],
                                                 allowed: list[str]) -> None:
    errors = assert_error_at(field_body, path)
    message = " ".join(e["msg"] for e in errors)
    for name in allowed:
        assert name in message, (name, message)


@pytest.mark.parametrize(("body", "path"), [
    (spec_with(optimizer={"name": "sgd", "lr": True}), ("optimizer", "lr")),
    (spec_with(optimizer={"name": "adam", "beta1": False}), ("optimizer", "beta1")),
    (spec_with(training={"validation_split": False}), ("training", "validation_split")),
    (spec_with(clipping={"mode": "global_norm", "max_norm": True}), ("clipping", "max_norm")),
    ({"data": {"source": "synthetic", "name": "spirals", "noise": True}}, ("data", "noise")),
    (spec_with(data={**INLINE_CLS, "X": [[0, 0], [0, True], [1, 0], [1, 1]]}),
     ("data", "X", 1, 1)),
], ids=["lr", "beta1", "validation_split", "max_norm", "noise", "inline-X"])
def test_boolean_for_a_number_is_an_error_at_that_field(body: dict[str, Any],
                                                        path: tuple[str | int, ...]) -> None:
    assert_error_at(body, path)


@pytest.mark.parametrize("body", [
    spec_with(optimizer={"name": "sgd", "lr": True}),
    spec_with(training={"validation_split": False}),
    spec_with(data={**INLINE_REG, "y": [1.0, True, 2.0]}),
], ids=["lr", "validation_split", "inline-y"])
def test_boolean_for_a_number_is_rejected(body: dict[str, Any]) -> None:
    """Whatever the error location, a boolean is never taken as 1/0."""
    validation_errors(body)


# ---- resource limits ---------------------------------------------------------------------------


def assert_limit(body: dict[str, Any], path: tuple[str | int, ...], limit_name: str,
                 value: int, **kwargs: Any) -> None:
    errors = assert_error_at(body, path, kind="limit_exceeded", **kwargs)
    limit_errors = [e for e in errors if e["type"] == "limit_exceeded"]
    assert any(limit_name in e["msg"] and str(value) in e["msg"] for e in limit_errors), (
        f"the message names neither {limit_name} nor {value}: {limit_errors}")


def mlp_parameters(sizes: list[int], batch_norm_units: int = 0) -> int:
    """Weights and biases of a dense MLP with layer widths ``sizes``."""
    return sum(a * b + b for a, b in itertools.pairwise(sizes)) + 2 * batch_norm_units


def test_parameter_limit() -> None:
    # spirals: 2 inputs, 3 classes
    body = spec_with(model={"hidden": [{"units": 4000}, {"units": 4000}, {"units": 1000}]})
    expected = mlp_parameters([2, 4000, 4000, 1000, 3])
    assert expected > SpecLimits().max_parameters
    assert_limit(body, ("model",), "max_parameters", expected)


def test_layer_limit() -> None:
    n_hidden = SpecLimits().max_layers  # + the output layer: one too many
    body = spec_with(model={"hidden": [{"units": 2}] * n_hidden})
    assert_limit(body, ("model", "hidden"), "max_layers", n_hidden + 1)
    ok = spec_with(model={"hidden": [{"units": 2}] * (n_hidden - 1)})
    assert len(TrainingSpec.model_validate(ok).model.hidden) == n_hidden - 1


def test_unit_limit() -> None:
    units = SpecLimits().max_units + 1
    body = spec_with(model={"hidden": [{"units": 2}, {"units": units}]})
    assert_limit(body, ("model", "hidden", 1, "units"), "max_units", units)


def test_step_limit_counts_epochs_times_batches() -> None:
    # 1000 samples, 20% held out -> 800 training examples -> 800 batches of 1 per epoch
    body = spec_with(data={"source": "synthetic", "name": "spirals", "n_samples": 1000},
                     training={"epochs": 2000, "batch_size": 1, "validation_split": 0.2})
    assert_limit(body, ("training",), "max_steps", 2000 * 800)
    # 800 / 64 -> 13 batches per epoch (the last one partial)
    fine = spec_with(data={"source": "synthetic", "name": "spirals", "n_samples": 1000},
                     training={"epochs": 2000, "batch_size": 64, "validation_split": 0.2})
    assert TrainingSpec.model_validate(fine).total_steps() == 2000 * 13


def test_sample_limit() -> None:
    n = SpecLimits().max_samples + 1
    body = {"data": {"source": "synthetic", "name": "spirals", "n_samples": n}}
    assert_limit(body, ("data",), "max_samples", n)


def test_batch_size_limit() -> None:
    bs = SpecLimits().max_batch_size + 1
    assert_limit(spec_with(training={"batch_size": bs}), ("training", "batch_size"),
                 "max_batch_size", bs)


def test_inline_value_limit() -> None:
    rows = [[float(i), float(i + 1), float(i + 2)] for i in range(10)]
    body = spec_with(data={"source": "inline", "task": "regression", "X": rows,
                           "y": [1.0] * 10})
    limits = SpecLimits(max_inline_values=29)
    assert_limit(body, ("data", "X"), "max_inline_values", 30, context={"limits": limits})
    # the same body is fine under the default limits
    TrainingSpec.model_validate(body)


def test_custom_limits_tighten_and_loosen_the_defaults() -> None:
    body = spec_with(model={"hidden": [{"units": 8}, {"units": 8}, {"units": 8}]})
    TrainingSpec.model_validate(body)
    assert_limit(body, ("model", "hidden"), "max_layers", 4,
                 context={"limits": SpecLimits(max_layers=3)})
    assert_limit(body, ("model",), "max_parameters", mlp_parameters([2, 8, 8, 8, 3]),
                 context={"limits": SpecLimits(max_parameters=100)})
    wide = spec_with(model={"hidden": [{"units": SpecLimits().max_units + 8}]})
    validation_errors(wide)
    spec = TrainingSpec.model_validate(
        wide, context={"limits": SpecLimits(max_units=SpecLimits().max_units + 8)})
    assert spec.model.hidden[0].units == SpecLimits().max_units + 8
    steps = spec_with(training={"epochs": 10, "batch_size": 32})  # 15 batches per epoch
    assert_limit(steps, ("training",), "max_steps", 150,
                 context={"limits": SpecLimits(max_steps=149)})
    assert_limit(spec_with(training={"batch_size": 33}), ("training", "batch_size"),
                 "max_batch_size", 33, context={"limits": SpecLimits(max_batch_size=32)})


HUGE_SPECS = [
    # 1e6 samples x 1e6 features = 1e12 data values
    ("data", {"data": {"source": "synthetic", "name": "blobs", "n_samples": 1_000_000,
                       "n_features": 1_000_000}}, {}, "max_data_values"),
    # 1e12 parameters, with the unit limit raised so that the parameter count decides
    ("parameters", spec_with(model={"hidden": [{"units": 1_000_000}, {"units": 1_000_000}]}),
     {"context": {"limits": SpecLimits(max_units=10**7)}}, "max_parameters"),
    # 1e12 optimizer steps (15 batches per epoch)
    ("steps", spec_with(training={"epochs": 10**12 // 15, "batch_size": 32}), {}, "max_steps"),
]


@pytest.mark.parametrize(("body", "kwargs", "limit_name"),
                         [(b, k, n) for _, b, k, n in HUGE_SPECS],
                         ids=[name for name, _, _, _ in HUGE_SPECS])
def test_a_spec_implying_1e12_floats_is_rejected_without_allocating(
        body: dict[str, Any], kwargs: dict[str, Any], limit_name: str) -> None:
    TrainingSpec.model_validate(MINIMAL)  # warm up pydantic's validators
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(ValidationError) as info:
            TrainingSpec.model_validate(body, **kwargs)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    errors = info.value.errors()
    assert [e["type"] for e in errors] == ["limit_exceeded"]
    assert limit_name in errors[0]["msg"]
    assert elapsed < 1.0
    assert peak < 5 * 2**20  # a few MB at most: nothing of the implied size


# ---- property tests ----------------------------------------------------------------------------

ACTIVATIONS = ["relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "softplus", "gelu",
               "linear"]

hidden_layers = st.lists(
    st.fixed_dictionaries({"units": st.integers(1, 12), "activation": st.sampled_from(ACTIVATIONS),
                           "batch_norm": st.booleans()}),
    max_size=4,
)
optimizers = st.one_of(
    st.fixed_dictionaries({"name": st.just("sgd"), "lr": st.floats(1e-4, 1.0),
                           "momentum": st.sampled_from([0.0, 0.5, 0.9])}),
    st.fixed_dictionaries({"name": st.sampled_from(["adam", "adamw", "rmsprop", "adagrad"]),
                           "lr": st.floats(1e-4, 1.0)}),
)
datasets = st.sampled_from([
    ({"source": "synthetic", "name": "spirals", "n_samples": 20, "n_classes": 4}, None),
    ({"source": "synthetic", "name": "moons", "n_samples": 20}, "binary_cross_entropy"),
    ({"source": "synthetic", "name": "moons", "n_samples": 20}, "mse"),
    ({"source": "synthetic", "name": "blobs", "n_samples": 20, "n_features": 5}, None),
    ({"source": "synthetic", "name": "linear", "n_samples": 20, "n_features": 3}, None),
    (INLINE_REG, None),
    (INLINE_CLS, "binary_cross_entropy"),
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hidden=hidden_layers, optimizer=optimizers, data_loss=datasets)
def test_parameter_count_matches_the_built_network(hidden: list[dict[str, Any]],
                                                   optimizer: dict[str, Any],
                                                   data_loss: tuple[dict[str, Any], str | None],
                                                   ) -> None:
    data, loss = data_loss
    body: dict[str, Any] = {"data": data, "model": {"hidden": hidden}, "optimizer": optimizer}
    if loss is not None:
        body["loss"] = loss
    spec = TrainingSpec.model_validate(body)
    params = core.Trainer(spec).parameters()
    assert spec.parameter_count() == sum(p.size for _, p in params)
    # names and shapes follow the contract: layers.{i}.weight (fan_in, fan_out), bias, BN
    sizes = spec.layer_sizes()
    expected_names: list[str] = []
    for i in range(len(sizes) - 1):
        expected_names += [f"layers.{i}.weight", f"layers.{i}.bias"]
        if i < len(hidden) and hidden[i]["batch_norm"]:
            expected_names += [f"layers.{i}.bn_gamma", f"layers.{i}.bn_beta"]
    assert [name for name, _ in params] == expected_names
    for name, p in params:
        i = int(name.split(".")[1])
        if name.endswith("weight"):
            assert p.shape == (sizes[i], sizes[i + 1])
        else:
            assert p.shape == (sizes[i + 1],)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["relu", "sgd", "none", "inline", "synthetic", "global_norm", "0.1", "1e3",
                     "NaN", "Infinity", "classification", "regression"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)

FIELD_PATHS: list[tuple[str | int, ...]] = [
    (), ("name",), ("seed",), ("dtype",), ("loss",), ("data",), ("data", "name"),
    ("data", "source"), ("data", "n_samples"), ("data", "n_features"), ("data", "n_classes"),
    ("data", "noise"), ("data", "input_scale"), ("model",), ("model", "hidden"),
    ("model", "hidden", 0), ("model", "hidden", 0, "units"), ("model", "hidden", 0, "init"),
    ("model", "init"), ("model", "init", "bias"), ("optimizer",), ("optimizer", "name"),
    ("optimizer", "lr"), ("optimizer", "momentum"), ("optimizer", "nesterov"), ("schedule",),
    ("clipping",), ("clipping", "max_norm"), ("training",), ("training", "epochs"),
    ("training", "batch_size"), ("training", "validation_split"), ("training", "max_steps"),
    ("monitor",), ("monitor", "record_every"),
]
INLINE_PATHS: list[tuple[str | int, ...]] = [
    ("data", "task"), ("data", "X"), ("data", "X", 0), ("data", "X", 1, 0), ("data", "y"),
    ("data", "y", 0), ("data", "standardize"),
]
BASE_FOR_JUNK: dict[str, Any] = {
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 50},
    "model": {"hidden": [{"units": 4, "init": {"scheme": "normal", "std": 0.1}}],
              "init": {"scheme": "he_normal", "bias": 0.0}},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5, "nesterov": False},
    "clipping": {"mode": "global_norm", "max_norm": 1.0},
    "training": {"epochs": 2, "batch_size": 8, "max_steps": 5},
    "monitor": {"record_every": 1},
}


def with_value_at(base: dict[str, Any], path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(base)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def check_only_validation_errors(body: Any) -> None:
    try:
        spec = TrainingSpec.model_validate(body)
    except ValidationError as e:
        for err in e.errors():
            assert isinstance(err["loc"], tuple) and err["msg"]
        json.loads(e.json())  # ready to be a 422 body
        return
    # whatever was accepted is a complete spec that round-trips
    again = TrainingSpec.model_validate(json.loads(json.dumps(spec.model_dump(mode="json"))))
    assert again == spec


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(FIELD_PATHS), value=json_values)
def test_junk_values_only_ever_raise_validation_errors(path: tuple[str | int, ...],
                                                       value: Any) -> None:
    check_only_validation_errors(with_value_at(BASE_FOR_JUNK, path, value))


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from(INLINE_PATHS), value=json_values,
       task=st.sampled_from(["classification", "regression"]))
def test_junk_inline_data_only_ever_raises_validation_errors(path: tuple[str | int, ...],
                                                             value: Any, task: str) -> None:
    base = {**BASE_FOR_JUNK, "data": {**copy.deepcopy(INLINE_CLS), "task": task}}
    check_only_validation_errors(with_value_at(base, path, value))


@settings(max_examples=100, deadline=None)
@given(body=json_values)
def test_a_junk_document_only_ever_raises_validation_errors(body: Any) -> None:
    check_only_validation_errors(body)
