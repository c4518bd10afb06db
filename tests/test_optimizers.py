"""Optimizers: hand-computed steps, torch.optim parity, float32, delta bookkeeping, NaN/Inf."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from core.optimizers import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, make_optimizer
from core.spec import OptimizerSpec

_OPTIMIZER = TypeAdapter(OptimizerSpec)


def make(name: str, params: np.ndarray, **options: Any) -> Optimizer:
    return make_optimizer(_OPTIMIZER.validate_python({"name": name, **options}), params)


def run(opt: Optimizer, grads: list[list[float]], lr: float) -> list[np.ndarray]:
    """Params after each step, for the given per-step gradients."""
    out = []
    for g in grads:
        opt.step(np.array(g, dtype=opt.params.dtype), lr)
        out.append(opt.params.copy())
    return out


@contextmanager
def no_numpy_warnings() -> Iterator[None]:
    """Fail on any warning, and make NumPy raise on floating-point errors not suppressed inside."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------------------------
# (a) hand-computed steps
# --------------------------------------------------------------------------------------------


def test_sgd_plain_step_is_minus_lr_times_grad() -> None:
    p = np.array([1.0, -2.0])
    delta = SGD(p).step(np.array([0.5, 1.0]), 0.1)
    np.testing.assert_allclose(p, [0.95, -2.1], rtol=1e-15)
    np.testing.assert_allclose(delta, [-0.05, -0.1], rtol=1e-15)


def test_sgd_momentum_first_buffer_is_the_gradient() -> None:
    # buf: 1, 1.9, 2.71 -> p: 1 - 0.1, - 0.19, - 0.271
    steps = run(SGD(np.array([1.0, 2.0]), momentum=0.9), [[1.0, -1.0]] * 3, lr=0.1)
    np.testing.assert_allclose(steps, [[0.9, 2.1], [0.71, 2.29], [0.439, 2.561]], rtol=1e-14)


def test_sgd_nesterov_adds_momentum_times_buffer() -> None:
    # buf: 1, 1.9, 2.71; direction g + 0.9 buf: 1.9, 2.71, 3.439
    steps = run(SGD(np.array([1.0]), momentum=0.9, nesterov=True), [[1.0]] * 3, lr=0.1)
    np.testing.assert_allclose(np.ravel(steps), [0.81, 0.539, 0.1951], rtol=1e-14)


def test_sgd_weight_decay_is_added_to_the_gradient() -> None:
    steps = run(SGD(np.array([1.0]), weight_decay=0.1), [[0.0]] * 3, lr=0.5)
    np.testing.assert_allclose(np.ravel(steps), [0.95, 0.9025, 0.857375], rtol=1e-14)


def test_sgd_nesterov_requires_momentum() -> None:
    with pytest.raises(ValueError, match="momentum"):
        SGD(np.zeros(2), nesterov=True)


def test_adam_bias_corrected_steps() -> None:
    # t=1: m=0.1, v=0.001 -> m_hat=1, v_hat=1: p = -lr
    # t=2: m=-0.01, v=0.001999, bc1=0.19, bc2=0.001999 -> p += lr * (0.01/0.19) / 1
    steps = run(Adam(np.array([0.0]), eps=1e-12), [[1.0], [-1.0]], lr=0.1)
    np.testing.assert_allclose(np.ravel(steps), [-0.1, -0.1 + 0.1 / 19], rtol=1e-10)


def test_adam_constant_gradient_moves_lr_per_step() -> None:
    g, eps, lr = np.array([0.5, -2.0]), 1e-8, 0.01
    steps = run(Adam(np.zeros(2), eps=eps), [g.tolist()] * 3, lr=lr)
    per_step = -lr * g / (np.abs(g) + eps)
    np.testing.assert_allclose(steps, [per_step, 2 * per_step, 3 * per_step], rtol=1e-12)


def test_adam_l2_weight_decay_enters_the_moments() -> None:
    # zero gradient, wd 0.5: g = 0.5 * p = 1 at p=2: Adam's first step is -lr * sign
    steps = run(Adam(np.array([2.0]), weight_decay=0.5), [[0.0]], lr=0.1)
    np.testing.assert_allclose(np.ravel(steps), [1.9], rtol=1e-9)


def test_adamw_decays_decoupled_from_the_moments() -> None:
    # zero gradient: Adam part is 0 / eps = 0, only p *= 1 - lr * wd remains
    steps = run(AdamW(np.array([2.0]), weight_decay=0.5), [[0.0]] * 3, lr=0.1)
    np.testing.assert_allclose(np.ravel(steps), [1.9, 1.805, 1.71475], rtol=1e-14)


def test_adamw_default_weight_decay_is_torch_default() -> None:
    assert AdamW(np.zeros(1)).weight_decay == 0.01
    assert make("adamw", np.zeros(1)).weight_decay == 0.01  # type: ignore[attr-defined]


def test_rmsprop_steps() -> None:
    s2 = 0.99 * 0.01 + 0.01  # square average after two unit gradients
    steps = run(RMSprop(np.array([0.0]), eps=0.0), [[1.0]] * 2, lr=0.01)
    np.testing.assert_allclose(np.ravel(steps), [-0.1, -0.1 - 0.01 / math.sqrt(s2)], rtol=1e-13)


def test_rmsprop_centered_subtracts_the_squared_mean() -> None:
    # t=1: s = 0.01, a = 0.01 -> sqrt(0.01 - 1e-4)
    steps = run(RMSprop(np.array([0.0]), eps=0.0, centered=True), [[1.0]], lr=0.01)
    np.testing.assert_allclose(np.ravel(steps), [-0.01 / math.sqrt(0.0099)], rtol=1e-13)


def test_rmsprop_momentum_accumulates_normalised_gradients() -> None:
    s2 = 0.99 * 0.01 + 0.01
    b1, b2 = 10.0, 0.5 * 10.0 + 1 / math.sqrt(s2)
    steps = run(RMSprop(np.array([0.0]), eps=0.0, momentum=0.5), [[1.0]] * 2, lr=0.01)
    np.testing.assert_allclose(np.ravel(steps), [-0.01 * b1, -0.01 * (b1 + b2)], rtol=1e-13)


def test_adagrad_steps_with_lr_decay_and_initial_accumulator() -> None:
    # sums: 1 + 9, 1 + 18, 1 + 27; clr: lr / (1 + (t-1) * 0.5)
    opt = Adagrad(np.array([0.0]), eps=0.0, lr_decay=0.5, initial_accumulator_value=1.0)
    steps = run(opt, [[3.0]] * 3, lr=0.1)
    expected = np.cumsum([-0.1 * 3 / math.sqrt(10), -0.1 / 1.5 * 3 / math.sqrt(19),
                          -0.1 / 2.0 * 3 / math.sqrt(28)])
    np.testing.assert_allclose(np.ravel(steps), expected, rtol=1e-13)


def test_adagrad_constant_gradient_shrinks_like_one_over_sqrt_t() -> None:
    steps = run(Adagrad(np.zeros(2)), [[3.0, -4.0]] * 2, lr=0.01)
    first = -0.01 * np.sign([3.0, -4.0])
    np.testing.assert_allclose(steps, [first, first * (1 + 1 / math.sqrt(2))], rtol=1e-9)


# --------------------------------------------------------------------------------------------
# delta, lr per step, scratch, dtype, non-finite
# --------------------------------------------------------------------------------------------

ALL_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {"weight_decay": 0.1}),
    ("adamw", {}),
    ("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1}),
    ("adagrad", {"lr_decay": 0.1, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS)
def test_step_returns_the_applied_change(name: str, options: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    params = rng.standard_normal(30)
    opt = make(name, params, **options)
    deltas = []
    for _ in range(3):
        old = params.copy()
        deltas.append(opt.step(rng.standard_normal(30), 0.05))
        np.testing.assert_array_equal(params, old + deltas[-1])
    assert deltas[0] is deltas[1] is deltas[2]  # one scratch buffer, no allocation per step
    assert opt.steps == 3


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS)
def test_params_are_updated_in_place(name: str, options: dict[str, Any]) -> None:
    buffer = np.ones(10)
    view = buffer[:4]
    make(name, buffer, **options).step(np.full(10, 0.5), 0.1)
    assert not np.array_equal(view, np.ones(4))


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS)
def test_float32_stays_float32_and_tracks_float64(name: str, options: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    p64 = rng.standard_normal(40)
    grads = [rng.standard_normal(40) for _ in range(10)]
    p32 = p64.astype(np.float32)
    opt64, opt32 = make(name, p64, **options), make(name, p32, **options)
    for g in grads:
        delta = opt32.step(g.astype(np.float32), 0.01)
        opt64.step(g.copy(), 0.01)
        assert delta.dtype == np.float32
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, p64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS)
def test_non_finite_gradients_propagate_without_warnings(name: str, options: dict[str, Any]) -> None:
    params = np.ones(4)
    opt = make(name, params, **options)
    with no_numpy_warnings():
        opt.step(np.array([np.nan, np.inf, -np.inf, 1e308]), 0.1)
        opt.step(np.array([1.0, 1.0, 1.0, 1e308]), 0.1)
    assert np.isnan(params[0])
    assert not np.isfinite(params[1]) and not np.isfinite(params[2])


def test_step_rejects_a_mismatched_gradient() -> None:
    with pytest.raises(ValueError, match="shape"):
        SGD(np.zeros(3)).step(np.zeros(4), 0.1)


def test_params_must_be_a_flat_float_buffer() -> None:
    with pytest.raises(ValueError, match="1-D"):
        SGD(np.zeros((2, 2, 2)))  # 2-D is a stack of networks (core.batched)
    with pytest.raises(ValueError, match="float"):
        SGD(np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", SGD), ("adam", Adam), ("adamw", AdamW), ("rmsprop", RMSprop), ("adagrad", Adagrad)],
)
def test_make_optimizer_builds_the_named_rule(name: str, cls: type[Optimizer]) -> None:
    assert type(make(name, np.zeros(2))) is cls


def test_make_optimizer_passes_the_options() -> None:
    opt = make("rmsprop", np.zeros(2), alpha=0.9, eps=1e-6, momentum=0.5, centered=True,
               weight_decay=0.2)
    assert isinstance(opt, RMSprop)
    assert (opt.alpha, opt.eps, opt.momentum, opt.centered, opt.weight_decay) == (
        0.9, 1e-6, 0.5, True, 0.2)
    adam = make("adam", np.zeros(2), beta1=0.5, beta2=0.9, eps=1e-3)
    assert isinstance(adam, Adam)
    assert (adam.beta1, adam.beta2, adam.eps, adam.weight_decay) == (0.5, 0.9, 1e-3, 0.0)


# --------------------------------------------------------------------------------------------
# (b) torch.optim parity: 20 steps, float64, varying lr
# --------------------------------------------------------------------------------------------

PARITY_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    *[("sgd", {"momentum": m, "nesterov": n, "weight_decay": wd})
      for m in (0.0, 0.9) for n in (False, True) for wd in (0.0, 0.01) if not (n and m == 0)],
    *[(name, {"beta1": b1, "beta2": b2, "eps": eps, "weight_decay": wd})
      for name in ("adam", "adamw")
      for b1, b2 in ((0.9, 0.999), (0.5, 0.9), (0.0, 0.99))
      for eps in (1e-8, 1e-3)
      for wd in (0.0, 0.1)],
    *[("rmsprop", {"alpha": a, "centered": c, "momentum": m, "weight_decay": wd})
      for a in (0.99, 0.3) for c in (False, True) for m in (0.0, 0.9) for wd in (0.0, 0.1)],
    *[("adagrad", {"lr_decay": d, "initial_accumulator_value": acc, "eps": eps,
                   "weight_decay": wd})
      for d in (0.0, 0.1) for acc in (0.0, 0.5) for eps in (1e-10, 1e-3) for wd in (0.0, 0.1)],
]


def torch_optimizer(torch: Any, name: str, param: Any, options: dict[str, Any]) -> Any:
    o = dict(options)
    if name in ("adam", "adamw"):
        o["betas"] = (o.pop("beta1"), o.pop("beta2"))
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[name]
    return cls([param], lr=1.0, foreach=False, **o)


@pytest.mark.parametrize(("name", "options"), PARITY_CONFIGS,
                         ids=[f"{n}-{o}" for n, o in PARITY_CONFIGS])
def test_matches_torch_optim_over_20_steps(name: str, options: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2024)
    n = 64
    p0 = rng.standard_normal(n) * 3.0
    ours = p0.copy()
    opt = make(name, ours, **options)
    theirs = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    topt = torch_optimizer(torch, name, theirs, options)
    base_lr = {"sgd": 0.05, "adam": 0.01, "adamw": 0.01, "rmsprop": 0.005, "adagrad": 0.1}[name]
    for t in range(20):
        # gradients of mixed scales, some exactly zero, depending on the current params
        g = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 2, n) + 0.1 * ours
        g[rng.random(n) < 0.1] = 0.0
        lr = base_lr * (1.0 + 0.5 * math.sin(t))
        theirs.grad = torch.from_numpy(g.copy())
        topt.param_groups[0]["lr"] = lr
        topt.step()
        opt.step(g, lr)
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=0,
                                   err_msg=f"step {t}")
