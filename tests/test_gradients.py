"""Finite-difference gradient checks of the whole network (float64, central differences)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core import Trainer, TrainingSpec
from core.spec import ACTIVATIONS

H = 1e-5
REL_TOL = 1e-6


def _spec(**overrides: Any) -> TrainingSpec:
    body: dict[str, Any] = {
        "seed": 3,
        "dtype": "float64",
        "data": {"source": "synthetic", "name": "blobs", "n_samples": 40, "n_features": 5,
                 "n_classes": 3},
        "model": {"hidden": [{"units": 7, "activation": "tanh"}],
                  "init": {"scheme": "xavier_normal", "bias": 0.1}},
    }
    body.update(overrides)
    return TrainingSpec.model_validate(body)


def _check(trainer: Trainer, n: int = 8, per_tensor: int = 12) -> float:
    """Largest relative error between analytic and numerical gradients on a batch."""
    X = trainer.data.X_train[:n]
    y = trainer.data.y_train[:n]
    _, grads = trainer.gradients(X, y)
    rng = np.random.default_rng(0)
    worst = 0.0
    for (name, p), g in zip(trainer.parameters(), grads, strict=True):
        flat_p, flat_g = p.reshape(-1), g.reshape(-1)
        for k in rng.choice(flat_p.size, size=min(per_tensor, flat_p.size), replace=False):
            old = flat_p[k]
            flat_p[k] = old + H
            up, _ = trainer.gradients(X, y)
            flat_p[k] = old - H
            down, _ = trainer.gradients(X, y)
            flat_p[k] = old
            num = (up - down) / (2 * H)
            ana = flat_g[k]
            if abs(num) < 1e-9 and abs(ana) < 1e-9:
                continue  # e.g. the bias before a batch norm: exactly zero gradient
            rel = abs(num - ana) / max(abs(num) + abs(ana), 1e-12)
            assert rel < REL_TOL, f"{name}[{k}]: analytic {ana!r} numerical {num!r} rel {rel:.2e}"
            worst = max(worst, rel)
    return worst


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_activation_backprops_exactly(activation: str, batch_norm: bool) -> None:
    spec = _spec(model={"hidden": [{"units": 6, "activation": activation,
                                    "batch_norm": batch_norm},
                                   {"units": 5, "activation": activation}],
                        "init": {"scheme": "xavier_normal", "bias": 0.1}})
    _check(Trainer(spec))


@pytest.mark.parametrize(
    ("data", "loss"),
    [
        ({"source": "synthetic", "name": "blobs", "n_samples": 40, "n_features": 4,
          "n_classes": 3}, "cross_entropy"),
        ({"source": "synthetic", "name": "moons", "n_samples": 40}, "binary_cross_entropy"),
        ({"source": "synthetic", "name": "blobs", "n_samples": 40, "n_features": 4,
          "n_classes": 3}, "mse"),
        ({"source": "synthetic", "name": "linear", "n_samples": 40, "n_features": 3}, "mse"),
        ({"source": "inline", "task": "regression", "X": [[0.1 * i, 1.0 - 0.05 * i] for i in range(12)],
          "y": [[0.3 * i, -0.1 * i] for i in range(12)]}, "mse"),
    ],
)
def test_every_loss_backprops_exactly(data: dict[str, Any], loss: str) -> None:
    _check(Trainer(_spec(data=data, loss=loss)))


def test_deep_network_with_batch_norm_backprops_exactly() -> None:
    hidden = [{"units": 6, "activation": a, "batch_norm": i % 2 == 0}
              for i, a in enumerate(["relu", "tanh", "gelu", "selu", "sigmoid", "elu",
                                     "leaky_relu", "softplus"])]
    _check(Trainer(_spec(model={"hidden": hidden, "init": {"scheme": "xavier_normal",
                                                           "bias": 0.05}})), per_tensor=4)


def test_linear_model_without_hidden_layers_backprops_exactly() -> None:
    _check(Trainer(_spec(model={"hidden": []})))


def test_gradients_change_no_parameter() -> None:
    trainer = Trainer(_spec(model={"hidden": [{"units": 5, "batch_norm": True}]}))
    before = [p.copy() for _, p in trainer.parameters()]
    running = {k: v.copy() for k, v in trainer.network.running_mean.items()}
    trainer.gradients(trainer.data.X_train[:8], trainer.data.y_train[:8])
    for (_, p), q in zip(trainer.parameters(), before, strict=True):
        np.testing.assert_array_equal(p, q)
    for k, v in running.items():
        np.testing.assert_array_equal(trainer.network.running_mean[k], v)


def test_parameters_are_live_views() -> None:
    trainer = Trainer(_spec())
    name, w = trainer.parameters()[0]
    assert name == "layers.0.weight"
    assert w.shape == (5, 7)
    w[...] = 0.0
    loss0, grads = trainer.gradients(trainer.data.X_train[:4], trainer.data.y_train[:4])
    # with a zero first layer the tanh outputs are tanh(bias): the same for every example
    assert np.allclose(trainer.network.hidden_activation(0), np.tanh(0.1))
    assert np.isfinite(loss0) and len(grads) == len(trainer.parameters())


def test_parameter_names_and_order_follow_the_contract() -> None:
    spec = _spec(model={"hidden": [{"units": 4, "batch_norm": True}, {"units": 3}]})
    names = [n for n, _ in Trainer(spec).parameters()]
    assert names == [
        "layers.0.weight", "layers.0.bias", "layers.0.bn_gamma", "layers.0.bn_beta",
        "layers.1.weight", "layers.1.bias",
        "layers.2.weight", "layers.2.bias",
    ]
