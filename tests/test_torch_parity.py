"""gradwatch's numbers match PyTorch's to float64 precision: losses, gradients, pre-clip norms
and whole training trajectories (optimizer, clipping, batch norm, schedules)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core import MemorySink, Trainer, TrainingSpec

torch = pytest.importorskip("torch")
nn = torch.nn

ACT = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "selu": nn.SELU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "gelu": lambda: nn.GELU(approximate="tanh"),
    "linear": nn.Identity,
}


def _torch_model(trainer: Trainer) -> Any:
    """The same network in torch, with gradwatch's initial parameters copied in."""
    spec = trainer.spec
    sizes = spec.layer_sizes()
    modules: list[Any] = []
    params = dict(trainer.parameters())
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(params[f"layers.{i}.weight"].T.copy()))
            lin.bias.copy_(torch.from_numpy(params[f"layers.{i}.bias"].copy()))
        modules.append(lin)
        if i < len(spec.model.hidden):
            h = spec.model.hidden[i]
            if h.batch_norm:
                modules.append(nn.BatchNorm1d(h.units).double())
            modules.append(ACT[h.activation]())
    return nn.Sequential(*modules)


def _torch_loss(name: str) -> Any:
    return {"mse": nn.MSELoss(), "cross_entropy": nn.CrossEntropyLoss(),
            "binary_cross_entropy": nn.BCEWithLogitsLoss()}[name]


def _spec(**overrides: Any) -> TrainingSpec:
    body: dict[str, Any] = {
        "seed": 1,
        "dtype": "float64",
        "data": {"source": "synthetic", "name": "spirals", "n_samples": 120, "n_classes": 3},
        "model": {"hidden": [{"units": 16, "activation": "relu"},
                             {"units": 16, "activation": "tanh", "batch_norm": True}]},
        "training": {"epochs": 3, "batch_size": 16, "shuffle": False, "validation_split": 0.0},
        "monitor": {"stop_on_explosion": False},
    }
    body.update(overrides)
    return TrainingSpec.model_validate(body)


def _torch_targets(trainer: Trainer, y: np.ndarray) -> Any:
    t = torch.from_numpy(trainer._targets(y))
    return t if trainer.loss_name == "cross_entropy" else t.double()


@pytest.mark.parametrize("activation", list(ACT))
def test_gradients_match_torch(activation: str) -> None:
    spec = _spec(model={"hidden": [{"units": 9, "activation": activation, "batch_norm": True},
                                   {"units": 7, "activation": activation}]})
    trainer = Trainer(spec)
    model = _torch_model(trainer)
    X, y = trainer.data.X_train[:32], trainer.data.y_train[:32]
    loss, grads = trainer.gradients(X, y)
    out = model(torch.from_numpy(X))
    t_loss = _torch_loss(trainer.loss_name)(out, _torch_targets(trainer, y))
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    t_grads = []
    for m in model:
        if isinstance(m, nn.Linear):
            t_grads += [m.weight.grad.numpy().T, m.bias.grad.numpy()]
        elif isinstance(m, nn.BatchNorm1d):
            t_grads += [m.weight.grad.numpy(), m.bias.grad.numpy()]
    assert len(t_grads) == len(grads)
    for g, tg in zip(grads, t_grads, strict=True):
        np.testing.assert_allclose(g, tg, rtol=1e-9, atol=1e-13)


def _torch_optimizer(spec: TrainingSpec, params: Any) -> Any:
    o = spec.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                 weight_decay=o.weight_decay)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.alpha, eps=o.eps,
                                   momentum=o.momentum, centered=o.centered,
                                   weight_decay=o.weight_decay)
    return torch.optim.Adagrad(params, lr=o.lr, lr_decay=o.lr_decay, eps=o.eps,
                               weight_decay=o.weight_decay,
                               initial_accumulator_value=o.initial_accumulator_value)


@pytest.mark.parametrize(
    ("optimizer", "clipping", "loss_data"),
    [
        ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
         {"mode": "global_norm", "max_norm": 0.5}, None),
        ({"name": "adam", "lr": 0.01, "weight_decay": 1e-4}, {"mode": "value", "clip_value": 0.05},
         None),
        ({"name": "adamw", "lr": 0.01}, {"mode": "none"}, None),
        ({"name": "rmsprop", "lr": 0.001, "momentum": 0.5, "centered": True}, {"mode": "none"},
         None),
        ({"name": "adagrad", "lr": 0.05, "lr_decay": 0.01}, {"mode": "global_norm", "max_norm": 1},
         None),
        ({"name": "sgd", "lr": 0.01}, {"mode": "none"},
         {"source": "synthetic", "name": "sine", "n_samples": 96}),
    ],
)
def test_training_trajectory_matches_torch(optimizer: dict[str, Any], clipping: dict[str, Any],
                                           loss_data: dict[str, Any] | None) -> None:
    overrides: dict[str, Any] = {"optimizer": optimizer, "clipping": clipping,
                                 "schedule": {"name": "step", "step_size": 7, "gamma": 0.5}}
    if loss_data is not None:
        overrides["data"] = loss_data
    spec = _spec(**overrides)
    trainer = Trainer(spec)
    model = _torch_model(trainer)  # before training: same initial parameters
    result = trainer.run(MemorySink())
    opt = _torch_optimizer(spec, model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    loss_fn = _torch_loss(trainer.loss_name)
    X = torch.from_numpy(trainer.data.X_train)
    y = _torch_targets(trainer, trainer.data.y_train)
    bs = spec.training.batch_size
    records = iter(result.steps)
    for _ in range(spec.training.epochs):
        for s in range(0, len(X), bs):
            opt.zero_grad()
            loss = loss_fn(model(X[s:s + bs]), y[s:s + bs])
            loss.backward()
            params = [p for p in model.parameters()]
            if clipping["mode"] == "global_norm":
                norm = nn.utils.clip_grad_norm_(params, clipping["max_norm"]).item()
            else:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(p.grad) for p in params])).item()
                if clipping["mode"] == "value":
                    nn.utils.clip_grad_value_(params, clipping["clip_value"])
            opt.step()
            sched.step()
            rec = next(records)
            assert rec.loss == pytest.approx(loss.item(), rel=1e-9), rec.step
            assert rec.grad_norm == pytest.approx(norm, rel=1e-9), rec.step
    assert next(records, None) is None
    final = dict(trainer.parameters())
    lin = [m for m in model if isinstance(m, nn.Linear)]
    np.testing.assert_allclose(final["layers.0.weight"], lin[0].weight.detach().numpy().T,
                               rtol=1e-8, atol=1e-12)
