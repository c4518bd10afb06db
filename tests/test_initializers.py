"""Initializers: the distributions of DESIGN.md, torch.nn.init gains and variances, seeding."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from core.initializers import gain, init_bias, init_weight
from core.spec import INIT_SCHEMES, InitSpec

_INIT = TypeAdapter(InitSpec)


def spec(scheme: str, **kw: Any) -> Any:
    return _INIT.validate_python({"scheme": scheme, **kw})


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# Expected std of each weight and, for uniform schemes, the bound a of U(-a, a).
FAN_IN, FAN_OUT = 400, 600


def expected_std(scheme: str, activation: str, fan_in: int, fan_out: int) -> float:
    g = gain(activation)
    return {
        "xavier_uniform": g * math.sqrt(2.0 / (fan_in + fan_out)),
        "xavier_normal": g * math.sqrt(2.0 / (fan_in + fan_out)),
        "he_uniform": math.sqrt(2.0 / fan_in),
        "he_normal": math.sqrt(2.0 / fan_in),
        "lecun_normal": math.sqrt(1.0 / fan_in),
        "orthogonal": 1.0 / math.sqrt(max(fan_in, fan_out)),
    }[scheme]


@pytest.mark.parametrize(
    ("activation", "value"),
    [("relu", math.sqrt(2)), ("leaky_relu", math.sqrt(2 / (1 + 0.01**2))), ("tanh", 5 / 3),
     ("selu", 0.75), ("sigmoid", 1.0), ("linear", 1.0), ("elu", 1.0), ("softplus", 1.0),
     ("gelu", 1.0)],
)
def test_gain_values(activation: str, value: float) -> None:
    assert gain(activation) == pytest.approx(value, rel=1e-15)


def test_gain_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        gain("swish")


@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "he_uniform",
                                    "he_normal", "lecun_normal", "orthogonal"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_empirical_std_matches_formula(scheme: str, activation: str) -> None:
    w = init_weight(spec(scheme), FAN_IN, FAN_OUT, activation, rng(), np.float64)
    assert w.shape == (FAN_IN, FAN_OUT)
    assert abs(w.mean()) < 0.01 * expected_std(scheme, activation, FAN_IN, FAN_OUT)
    assert w.std() == pytest.approx(expected_std(scheme, activation, FAN_IN, FAN_OUT), rel=0.01)


@pytest.mark.parametrize("scheme", ["xavier_uniform", "he_uniform"])
def test_uniform_schemes_fill_their_bound(scheme: str) -> None:
    w = init_weight(spec(scheme), FAN_IN, FAN_OUT, "tanh", rng(), np.float64)
    bound = math.sqrt(3.0) * expected_std(scheme, "tanh", FAN_IN, FAN_OUT)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.999 * bound


def test_he_uses_the_relu_gain_whatever_the_activation() -> None:
    a = init_weight(spec("he_normal"), 50, 60, "tanh", rng(3), np.float64)
    b = init_weight(spec("he_normal"), 50, 60, "relu", rng(3), np.float64)
    np.testing.assert_array_equal(a, b)


def test_normal_and_uniform_ignore_layer_size() -> None:
    w = init_weight(spec("normal", std=2.5), FAN_IN, FAN_OUT, "relu", rng(), np.float64)
    assert w.std() == pytest.approx(2.5, rel=0.01)
    u = init_weight(spec("uniform", scale=0.3), FAN_IN, FAN_OUT, "relu", rng(), np.float64)
    assert np.abs(u).max() <= 0.3
    assert u.std() == pytest.approx(0.3 / math.sqrt(3), rel=0.01)


@pytest.mark.parametrize(("fan_in", "fan_out"), [(64, 32), (32, 64), (50, 50)])
def test_orthogonal_is_semi_orthogonal_times_gain(fan_in: int, fan_out: int) -> None:
    w = init_weight(spec("orthogonal", gain=2.0), fan_in, fan_out, "relu", rng(), np.float64)
    small = min(fan_in, fan_out)
    gram = w.T @ w if fan_in >= fan_out else w @ w.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-12)


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_same_seed_same_weights(scheme: str) -> None:
    a = init_weight(spec(scheme), 7, 5, "relu", rng(42), np.float64)
    b = init_weight(spec(scheme), 7, 5, "relu", rng(42), np.float64)
    c = init_weight(spec(scheme), 7, 5, "relu", rng(43), np.float64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_and_shape(scheme: str, dtype: type[np.floating[Any]]) -> None:
    w = init_weight(spec(scheme), 3, 9, "selu", rng(), dtype)
    assert w.dtype == dtype
    assert w.shape == (3, 9)


def test_float32_is_the_rounded_float64_draw() -> None:
    a = init_weight(spec("he_normal"), 20, 30, "relu", rng(1), np.float32)
    b = init_weight(spec("he_normal"), 20, 30, "relu", rng(1), np.float64)
    np.testing.assert_array_equal(a, b.astype(np.float32))


def test_randomness_comes_only_from_the_passed_generator() -> None:
    np.random.seed(0)
    a = init_weight(spec("xavier_normal"), 10, 10, "tanh", rng(5), np.float64)
    np.random.seed(1)
    b = init_weight(spec("xavier_normal"), 10, 10, "tanh", rng(5), np.float64)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_is_the_constant(dtype: type[np.floating[Any]]) -> None:
    b = init_bias(spec("he_normal", bias=0.25), 6, dtype)
    assert b.dtype == dtype
    np.testing.assert_array_equal(b, np.full(6, 0.25, dtype=dtype))
    np.testing.assert_array_equal(init_bias(spec("uniform"), 4, dtype), np.zeros(4))


def test_rejects_empty_layers() -> None:
    with pytest.raises(ValueError, match="fan_in"):
        init_weight(spec("he_normal"), 0, 3, "relu", rng(), np.float64)


# --------------------------------------------------------------------------------------------
# torch.nn.init parity (gains and per-scheme variance); torch is a test-only dependency
# --------------------------------------------------------------------------------------------

TORCH_GAIN_ACTIVATIONS = ["relu", "leaky_relu", "tanh", "selu", "sigmoid", "linear"]


@pytest.mark.parametrize("activation", TORCH_GAIN_ACTIVATIONS)
def test_gain_matches_torch_calculate_gain(activation: str) -> None:
    torch = pytest.importorskip("torch")
    assert gain(activation) == pytest.approx(torch.nn.init.calculate_gain(activation), rel=1e-15)


@pytest.mark.parametrize("activation", TORCH_GAIN_ACTIVATIONS)
@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "he_uniform",
                                    "he_normal", "orthogonal"])
def test_variance_matches_torch_nn_init(scheme: str, activation: str) -> None:
    torch = pytest.importorskip("torch")
    init = torch.nn.init
    t = torch.empty(FAN_OUT, FAN_IN, dtype=torch.float64)  # torch: (out, in)
    torch.manual_seed(0)
    torch_gain = init.calculate_gain(activation)
    if scheme == "xavier_uniform":
        init.xavier_uniform_(t, gain=torch_gain)
    elif scheme == "xavier_normal":
        init.xavier_normal_(t, gain=torch_gain)
    elif scheme == "he_uniform":
        init.kaiming_uniform_(t, mode="fan_in", nonlinearity="relu")
    elif scheme == "he_normal":
        init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu")
    else:
        init.orthogonal_(t)
    ours = init_weight(spec(scheme), FAN_IN, FAN_OUT, activation, rng(), np.float64)
    assert ours.var() == pytest.approx(float(t.var(correction=0)), rel=0.02)
    if "uniform" in scheme:
        assert np.abs(ours).max() == pytest.approx(float(t.abs().max()), rel=1e-3)


def test_lecun_normal_matches_torch_formula() -> None:
    torch = pytest.importorskip("torch")
    t = torch.empty(FAN_OUT, FAN_IN, dtype=torch.float64)
    torch.manual_seed(0)
    # LeCun normal = kaiming with the linear gain (1) on fan_in
    torch.nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="linear")
    ours = init_weight(spec("lecun_normal"), FAN_IN, FAN_OUT, "selu", rng(), np.float64)
    assert ours.var() == pytest.approx(float(t.var(correction=0)), rel=0.02)
