"""core.data: generators, bundled sets, inline data, split, standardisation."""

from __future__ import annotations

import json
import math
import socket
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core import data as core_data
from core.data import Dataset, dataset_catalog, load_builtin, load_dataset, make_synthetic
from core.spec import (
    BUILTIN_DATASETS,
    SYNTHETIC_DATASETS,
    SyntheticData,
    TrainingSpec,
    data_shape,
)

GENERATORS = list(SYNTHETIC_DATASETS)
CLASSIFIERS = [n for n in GENERATORS if SYNTHETIC_DATASETS[n]["task"] == "classification"]
REGRESSORS = [n for n in GENERATORS if SYNTHETIC_DATASETS[n]["task"] == "regression"]
BUILTINS = list(BUILTIN_DATASETS)
DTYPES = ["float32", "float64"]


def make_spec(data: dict[str, Any], *, seed: int = 0, dtype: str = "float64",
              validation_split: float = 0.2) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "seed": seed, "dtype": dtype, "data": data,
        "training": {"validation_split": validation_split},
    })


def load(data: dict[str, Any], *, seed: int = 0, **kwargs: Any) -> Dataset:
    spec = make_spec(data, seed=seed, **kwargs)
    return load_dataset(spec, np.random.default_rng(spec.seed))


def synthetic(name: str, **params: Any) -> dict[str, Any]:
    return {"source": "synthetic", "name": name, **params}


def builtin(name: str, **params: Any) -> dict[str, Any]:
    return {"source": "builtin", "name": name, **params}


def all_arrays(ds: Dataset) -> list[np.ndarray]:
    return [ds.X_train, ds.y_train, ds.X_val, ds.y_val]


def assert_matches_spec(ds: Dataset, spec: TrainingSpec) -> None:
    shape = data_shape(spec.data)
    n_train = spec.n_train_samples()
    n_val = shape.n_samples - n_train
    dtype = np.dtype(spec.dtype)
    assert ds.task == shape.task
    assert ds.n_features == shape.n_features
    assert ds.n_classes == shape.n_classes
    assert ds.X_train.shape == (n_train, shape.n_features)
    assert ds.X_val.shape == (n_val, shape.n_features)
    assert ds.X_train.dtype == dtype and ds.X_val.dtype == dtype
    if shape.task == "classification":
        assert ds.y_train.shape == (n_train,) and ds.y_val.shape == (n_val,)
        assert ds.y_train.dtype == np.int64 and ds.y_val.dtype == np.int64
        assert ds.n_outputs == shape.n_classes
        labels = np.concatenate([ds.y_train, ds.y_val])
        assert shape.n_classes is not None
        assert labels.min() >= 0 and labels.max() < shape.n_classes
    else:
        k = shape.n_outputs_regression
        assert ds.y_train.shape == (n_train, k) and ds.y_val.shape == (n_val, k)
        assert ds.y_train.dtype == dtype and ds.y_val.dtype == dtype
        assert ds.n_outputs == k
    for a in all_arrays(ds):
        assert a.flags.c_contiguous
        assert np.all(np.isfinite(a))


# ---- shapes and dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GENERATORS)
def test_every_generator_matches_its_data_shape(name: str, dtype: str) -> None:
    spec = make_spec(synthetic(name), dtype=dtype)
    assert_matches_spec(load_dataset(spec, np.random.default_rng(0)), spec)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_set_matches_its_data_shape(name: str, dtype: str) -> None:
    spec = make_spec(builtin(name), dtype=dtype)
    assert_matches_spec(load_dataset(spec, np.random.default_rng(0)), spec)


@pytest.mark.parametrize(("name", "params"), [
    ("spirals", {"n_classes": 5}),
    ("blobs", {"n_classes": 7, "n_features": 9}),
    ("linear", {"n_features": 12}),
    ("moons", {"n_samples": 3}),
])
def test_generators_honour_their_free_parameters(name: str, params: dict[str, Any]) -> None:
    spec = make_spec(synthetic(name, **params))
    assert_matches_spec(load_dataset(spec, np.random.default_rng(0)), spec)


def test_float32_data_are_the_float64_data_rounded() -> None:
    for data in (synthetic("spirals"), synthetic("linear", standardize=True), builtin("wine")):
        d64 = load(data, dtype="float64")
        d32 = load(data, dtype="float32")
        for a64, a32 in zip(all_arrays(d64), all_arrays(d32), strict=True):
            np.testing.assert_array_equal(a32, a64.astype(a32.dtype))


def test_no_validation_split_gives_empty_validation_arrays() -> None:
    clf = load(synthetic("xor"), validation_split=0.0)
    assert clf.X_val.shape == (0, 2) and clf.y_val.shape == (0,)
    reg = load(synthetic("sine"), validation_split=0.0)
    assert reg.X_val.shape == (0, 1) and reg.y_val.shape == (0, 1)
    assert len(clf.X_train) == len(reg.X_train) == 600


# ---- randomness ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [synthetic(n) for n in GENERATORS] + [builtin("iris")],
                         ids=lambda d: d["name"])
def test_same_seed_gives_identical_arrays_and_another_seed_different(data: dict[str, Any]) -> None:
    first, again, other = load(data, seed=7), load(data, seed=7), load(data, seed=8)
    for a, b in zip(all_arrays(first), all_arrays(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.X_train, other.X_train)


def test_all_randomness_comes_from_the_passed_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_new_generators(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load_dataset must not create its own Generator")

    np.random.seed(123)
    next_global_draw = np.random.random()
    np.random.seed(123)
    spec = make_spec(synthetic("blobs"))
    expected = load_dataset(spec, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    monkeypatch.setattr(np.random, "default_rng", no_new_generators)
    monkeypatch.setattr(np.random, "RandomState", no_new_generators)
    got = load_dataset(spec, rng)
    for a, b in zip(all_arrays(expected), all_arrays(got), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.random.random() == next_global_draw  # global state untouched


def test_generator_draws_advance_the_callers_generator() -> None:
    rng = np.random.default_rng(0)
    spec = make_spec(synthetic("spirals"))
    first = load_dataset(spec, rng)
    second = load_dataset(spec, rng)
    assert not np.array_equal(first.X_train, second.X_train)


# ---- split ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 400), validation_split=st.floats(0.0, 0.99), seed=st.integers(0, 2**32))
def test_split_sizes_follow_the_spec(n: int, validation_split: float, seed: int) -> None:
    try:
        spec = make_spec(synthetic("moons", n_samples=n), seed=seed,
                         validation_split=validation_split)
    except ValidationError:
        assume(False)
        raise
    ds = load_dataset(spec, np.random.default_rng(seed))
    assert len(ds.X_train) == len(ds.y_train) == spec.n_train_samples()
    assert len(ds.X_val) == len(ds.y_val) == math.floor(n * validation_split)
    assert len(ds.X_train) + len(ds.X_val) == n


def test_validation_is_the_tail_of_the_same_permutation() -> None:
    everything = load(synthetic("linear", n_features=3), validation_split=0.0)
    split = load(synthetic("linear", n_features=3), validation_split=0.25)
    assert len(split.X_val) == 150
    np.testing.assert_array_equal(np.vstack([split.X_train, split.X_val]), everything.X_train)
    np.testing.assert_array_equal(np.vstack([split.y_train, split.y_val]), everything.y_train)


def test_data_are_shuffled_before_the_split() -> None:
    # iris is stored sorted by species: an unshuffled tail would be all virginica.
    ds = load(builtin("iris"))
    assert len(set(ds.y_val.tolist())) == 3


# ---- standardisation -------------------------------------------------------------------------


@pytest.mark.parametrize("data", [synthetic("spirals"), synthetic("linear"), builtin("iris"),
                                  {"source": "inline", "task": "regression",
                                   "X": [[1.0], [2.0], [3.0], [4.0]], "y": [1.0, 2.0, 3.0, 4.0]}],
                         ids=["spirals", "linear", "iris", "inline"])
def test_standardisation_is_off_by_default(data: dict[str, Any]) -> None:
    spec = make_spec(data)
    assert spec.data.standardize is False
    ds = load_dataset(spec, np.random.default_rng(0))
    assert not ds.standardized
    assert ds.x_mean is None and ds.x_std is None and ds.y_mean is None and ds.y_std is None


def test_unstandardised_synthetic_data_are_the_generator_output_permuted() -> None:
    data = SyntheticData.model_validate(synthetic("moons"))
    rng = np.random.default_rng(3)
    X, y = make_synthetic(data, rng)
    order = rng.permutation(len(X))
    ds = load(synthetic("moons"), seed=3, validation_split=0.0)
    np.testing.assert_array_equal(ds.X_train, X[order])
    np.testing.assert_array_equal(ds.y_train, y[order])


@pytest.mark.parametrize("name", ["linear", "sine"])
def test_standardisation_uses_training_statistics_only(name: str) -> None:
    data = synthetic(name, input_scale=50.0, target_scale=20.0)
    raw = load(data, seed=4, validation_split=0.3)
    std = load({**data, "standardize": True}, seed=4, validation_split=0.3)
    assert std.standardized
    assert std.x_mean is not None and std.x_std is not None
    assert std.y_mean is not None and std.y_std is not None
    np.testing.assert_allclose(std.x_mean, raw.X_train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std.x_std, raw.X_train.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std.y_mean, raw.y_train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std.y_std, raw.y_train.std(axis=0), rtol=1e-12)
    # the validation split never contributes: its own statistics are different
    all_X = np.vstack([raw.X_train, raw.X_val])
    assert not np.allclose(std.x_mean, all_X.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std.X_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(std.X_train.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(std.y_train.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(std.X_val, (raw.X_val - std.x_mean) / std.x_std, rtol=1e-12)
    np.testing.assert_allclose(std.y_val, (raw.y_val - std.y_mean) / std.y_std, rtol=1e-12)


def test_classification_labels_are_never_standardised() -> None:
    raw = load(builtin("wine"))
    std = load(builtin("wine", standardize=True))
    np.testing.assert_array_equal(raw.y_train, std.y_train)
    assert std.y_mean is None and std.y_std is None
    assert std.y_train.dtype == np.int64


def test_a_constant_training_column_is_centred_but_not_scaled() -> None:
    raw = load(builtin("digits"))
    std = load(builtin("digits", standardize=True))
    assert std.x_std is not None and std.x_mean is not None
    constant = np.ptp(raw.X_train, axis=0) == 0
    assert constant.any()  # digits has always-blank border pixels
    np.testing.assert_array_equal(std.x_std[constant], 1.0)
    np.testing.assert_array_equal(std.X_train[:, constant], 0.0)
    assert np.all(np.isfinite(std.X_val))


def test_standardised_inline_data_with_a_constant_column_stay_finite() -> None:
    data = {"source": "inline", "task": "classification", "standardize": True,
            "X": [[0.1, float(i)] for i in range(10)], "y": [i % 2 for i in range(10)]}
    ds = load(data)
    assert ds.x_std is not None
    assert ds.x_std[0] == 1.0
    assert np.all(np.isfinite(ds.X_train)) and np.all(np.isfinite(ds.X_val))


# ---- badly scaled data stay badly scaled -----------------------------------------------------


@pytest.mark.parametrize("name", GENERATORS)
def test_input_scale_multiplies_the_inputs(name: str) -> None:
    unit = load(synthetic(name), seed=2)
    scaled = load(synthetic(name, input_scale=1000.0), seed=2)
    np.testing.assert_allclose(scaled.X_train, 1000.0 * unit.X_train, rtol=1e-15)
    np.testing.assert_allclose(scaled.X_val, 1000.0 * unit.X_val, rtol=1e-15)
    np.testing.assert_array_equal(scaled.y_train, unit.y_train)
    ratio = scaled.describe()["x_abs_mean"] / unit.describe()["x_abs_mean"]
    assert ratio == pytest.approx(1000.0)


@pytest.mark.parametrize("name", REGRESSORS)
def test_target_scale_multiplies_regression_targets(name: str) -> None:
    unit = load(synthetic(name), seed=2)
    scaled = load(synthetic(name, target_scale=1000.0), seed=2)
    np.testing.assert_allclose(scaled.y_train, 1000.0 * unit.y_train, rtol=1e-15)
    np.testing.assert_array_equal(scaled.X_train, unit.X_train)
    assert scaled.describe()["y_std"] == pytest.approx(1000.0 * unit.describe()["y_std"])


def test_standardising_undoes_a_bad_input_scale() -> None:
    unit = load(synthetic("circles", standardize=True))
    scaled = load(synthetic("circles", input_scale=1e4, standardize=True))
    np.testing.assert_allclose(scaled.X_train, unit.X_train, rtol=1e-9, atol=1e-12)


def test_standardising_survives_scales_near_the_float64_limit() -> None:
    ds = load(synthetic("linear", input_scale=1e300, target_scale=1e300, standardize=True))
    np.testing.assert_allclose(ds.X_train.std(axis=0), 1.0, rtol=1e-9)
    np.testing.assert_allclose(ds.y_train.std(axis=0), 1.0, rtol=1e-9)


def test_values_beyond_float32_become_infinite_and_describe_reports_them() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load(synthetic("blobs", input_scale=1e40), dtype="float32")
        summary = ds.describe()
    assert np.isinf(ds.X_train).any()
    assert summary["x_abs_max"] == math.inf


def test_bundled_sets_keep_their_raw_scales() -> None:
    summary = load(builtin("diabetes")).describe()
    assert summary["y_mean"] > 100 and summary["y_std"] > 50
    assert load(builtin("wine")).describe()["x_feature_std_max"] > 100  # proline


# ---- generator semantics ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [600, 601, 602, 603, 7])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_class_based_generators_are_balanced(name: str, n: int) -> None:
    params = {"n_classes": 4} if SYNTHETIC_DATASETS[name]["free_classes"] else {}
    k = params.get("n_classes", SYNTHETIC_DATASETS[name]["n_classes"])
    ds = load(synthetic(name, n_samples=n, **params), validation_split=0.0)
    counts = np.bincount(ds.y_train, minlength=k)
    assert len(counts) == k
    assert counts.max() - counts.min() <= 1


def noiseless(name: str, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    data = SyntheticData.model_validate(synthetic(name, noise=0.0, **params))
    return make_synthetic(data, np.random.default_rng(0))


def test_moons_lie_on_two_interleaved_half_circles() -> None:
    X, y = noiseless("moons", n_samples=100)
    outer, inner = X[y == 0], X[y == 1]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0)
    assert np.all(outer[:, 1] >= -1e-12)
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1.0, inner[:, 1] - 0.5), 1.0)
    assert np.all(inner[:, 1] <= 0.5 + 1e-12)


def test_circles_have_radius_one_and_one_half() -> None:
    X, y = noiseless("circles", n_samples=100)
    np.testing.assert_allclose(np.hypot(*X[y == 0].T), 1.0)
    np.testing.assert_allclose(np.hypot(*X[y == 1].T), 0.5)


def test_spiral_arms_grow_from_the_centre_to_radius_one() -> None:
    X, y = noiseless("spirals", n_samples=300, n_classes=3)
    for k in range(3):
        radius = np.hypot(*X[y == k].T)
        assert radius[0] == 0.0 and radius[-1] == pytest.approx(1.0)
        assert np.all(np.diff(radius) > 0)


def test_xor_label_is_the_sign_product_of_the_cluster() -> None:
    X, y = noiseless("xor", n_samples=40)
    np.testing.assert_array_equal(np.abs(X), 1.0)
    np.testing.assert_array_equal(y, (X[:, 0] * X[:, 1] < 0).astype(np.int64))


def test_blobs_centres_lie_in_the_box_and_noise_is_the_cluster_std() -> None:
    X, y = noiseless("blobs", n_samples=90, n_classes=3, n_features=4)
    assert np.all(np.abs(X) <= 10.0)
    for k in range(3):
        assert np.ptp(X[y == k], axis=0).max() == 0.0
    data = SyntheticData.model_validate(synthetic("blobs", n_samples=30_000, noise=2.5))
    X, y = make_synthetic(data, np.random.default_rng(0))
    for k in range(3):
        np.testing.assert_allclose(X[y == k].std(axis=0), 2.5, rtol=0.05)


def test_linear_targets_are_an_affine_function_of_the_inputs() -> None:
    X, y = noiseless("linear", n_samples=50, n_features=3)
    A = np.column_stack([X, np.ones(len(X))])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    np.testing.assert_allclose(A @ coef, y, atol=1e-10)


def test_sine_targets_are_the_sine_of_inputs_in_minus_pi_pi() -> None:
    X, y = noiseless("sine", n_samples=200)
    assert np.all(np.abs(X) <= np.pi)
    np.testing.assert_array_equal(y, np.sin(X))


# ---- bundled data sets -----------------------------------------------------------------------


def test_builtin_metadata_in_the_spec_matches_the_files() -> None:
    for name, meta in BUILTIN_DATASETS.items():
        X, y = load_builtin(name)
        assert X.shape == (meta["n_samples"], meta["n_features"]), name
        if meta["task"] == "classification":
            assert np.array_equal(np.unique(y), np.arange(meta["n_classes"])), name
        else:
            assert meta["n_classes"] is None and y.shape == (meta["n_samples"], 1)


def test_iris_has_50_examples_of_each_species() -> None:
    X, y = load_builtin("iris")
    np.testing.assert_array_equal(np.bincount(y), [50, 50, 50])
    # Fisher's values (R's iris), not the UCI file's two wrong points
    np.testing.assert_array_equal(X[34], [4.9, 3.1, 1.5, 0.2])
    np.testing.assert_array_equal(X[37], [4.9, 3.6, 1.4, 0.1])


def test_digits_are_8x8_integer_pixels_0_to_16() -> None:
    X, y = load_builtin("digits")
    assert X.shape == (1797, 64)
    np.testing.assert_array_equal(X, np.round(X))
    assert X.min() == 0 and X.max() == 16
    np.testing.assert_array_equal(np.unique(y), np.arange(10))


def test_wine_and_breast_cancer_class_counts() -> None:
    np.testing.assert_array_equal(np.bincount(load_builtin("wine")[1]), [59, 71, 48])
    np.testing.assert_array_equal(np.bincount(load_builtin("breast_cancer")[1]), [212, 357])


def test_diabetes_is_raw_with_targets_25_to_346() -> None:
    X, y = load_builtin("diabetes")
    assert y.min() == 25 and y.max() == 346
    np.testing.assert_array_equal(y, np.round(y))
    assert set(np.unique(X[:, 1])) == {1.0, 2.0}  # sex, raw coding
    assert X[:, 0].min() >= 19 and X[:, 0].max() <= 79  # age in years


def test_bundled_sets_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no network access allowed")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    core_data._read_builtin.cache_clear()
    for name in BUILTINS:
        load(builtin(name))


def test_builtin_loads_return_copies_of_the_cached_file() -> None:
    X, y = load_builtin("iris")
    X[:] = -1.0
    y[:] = 99
    X2, y2 = load_builtin("iris")
    assert X2.min() > 0 and y2.max() == 2
    ds = load(builtin("iris"))
    ds.X_train[:] = 0.0
    assert load(builtin("iris")).X_train.min() > 0


def test_builtin_datasets_carry_feature_names() -> None:
    ds = load(builtin("wine"))
    assert ds.feature_names is not None and ds.feature_names[-1] == "proline"
    assert load(synthetic("xor")).feature_names is None


# ---- inline data -----------------------------------------------------------------------------


def test_inline_classification_labels_are_int64() -> None:
    data = {"source": "inline", "task": "classification",
            "X": [[0, 0], [0, 1], [1, 0], [1, 1]], "y": [0, 1, 1, 0]}
    spec = make_spec(data, dtype="float32", validation_split=0.0)
    ds = load_dataset(spec, np.random.default_rng(0))
    assert_matches_spec(ds, spec)
    assert ds.y_train.dtype == np.int64 and ds.n_classes == 2 and ds.n_outputs == 2
    assert sorted(map(tuple, ds.X_train.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_inline_regression_targets_become_columns() -> None:
    one = load({"source": "inline", "task": "regression",
                "X": [[1.0], [2.0], [3.0]], "y": [10.0, 20.0, 30.0]}, validation_split=0.0)
    assert one.y_train.shape == (3, 1) and one.n_outputs == 1
    np.testing.assert_array_equal(one.y_train[:, 0], 10.0 * one.X_train[:, 0])
    two = load({"source": "inline", "task": "regression",
                "X": [[1.0], [2.0], [3.0]], "y": [[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]},
               validation_split=0.0)
    assert two.y_train.shape == (3, 2) and two.n_outputs == 2
    np.testing.assert_array_equal(two.y_train[:, 1], -two.X_train[:, 0])


def test_inline_data_are_used_as_given() -> None:
    ds = load({"source": "inline", "task": "regression",
               "X": [[1e6, 1e-6], [2e6, 2e-6], [3e6, 3e-6]], "y": [1e4, 2e4, 3e4]},
              validation_split=0.0)
    assert ds.describe()["x_abs_max"] == 3e6
    assert ds.describe()["y_abs_max"] == 3e4


# ---- catalogue and summary -------------------------------------------------------------------


def test_catalog_lists_every_named_data_set() -> None:
    catalog = dataset_catalog()
    assert [e["name"] for e in catalog] == GENERATORS + BUILTINS
    keys = {"name", "source", "task", "n_samples", "n_features", "n_classes", "description"}
    assert all(set(e) == keys for e in catalog)
    by_name = {e["name"]: e for e in catalog}
    assert by_name["spirals"] == {
        "name": "spirals", "source": "synthetic", "task": "classification", "n_samples": 600,
        "n_features": 2, "n_classes": 3,
        "description": SYNTHETIC_DATASETS["spirals"]["description"]}
    assert by_name["sine"]["n_features"] == 1 and by_name["sine"]["n_classes"] is None
    assert by_name["digits"]["n_samples"] == 1797 and by_name["digits"]["source"] == "builtin"
    json.dumps(catalog)


@pytest.mark.parametrize("data", [synthetic("spirals"), synthetic("sine"), builtin("wine")],
                         ids=lambda d: d["name"])
def test_describe_summarises_the_training_split_scale(data: dict[str, Any]) -> None:
    ds = load(data)
    summary = ds.describe()
    json.dumps(summary)
    assert summary["n_train"] == len(ds.X_train) and summary["n_val"] == len(ds.X_val)
    assert summary["x_abs_mean"] == pytest.approx(np.abs(ds.X_train).mean())
    assert summary["x_std"] == pytest.approx(ds.X_train.std())
    if ds.task == "classification":
        assert sum(summary["class_counts"]) == len(ds.X_train)
        assert summary["y_std"] is None
    else:
        assert summary["y_std"] == pytest.approx(ds.y_train.std())
        assert summary["class_counts"] is None
