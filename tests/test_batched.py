"""core.batched: K members trained as one stacked computation equal K single runs.

Every member's trajectory (each step record with its per-layer telemetry, the epoch records,
the alerts, the first non-finite value, the stop reason, the final parameters) is compared with
``core.Trainer`` training that member alone, to 1e-10 relative in float64.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

from core import MemorySink, StepRecord, Trainer, TrainingResult, TrainingSpec
from core.batched import BatchedTrainer, stack_key, train_specs

RTOL = 1e-10

BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
    "model": {"hidden": [{"units": 8}, {"units": 8}]},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "training": {"epochs": 3, "batch_size": 16},
}

OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "sgd", "lr": 0.1},
    {"name": "adam", "lr": 0.01, "weight_decay": 0.001},
    {"name": "adamw", "lr": 0.01},
    {"name": "rmsprop", "lr": 0.01, "momentum": 0.5, "centered": True},
    {"name": "adagrad", "lr": 0.1, "lr_decay": 0.01},
]
CLIPPING: list[dict[str, Any]] = [
    {"mode": "none"},
    {"mode": "global_norm", "max_norm": 0.5},
    {"mode": "value", "clip_value": 0.05},
    {"mode": "layer_norm", "max_norm": 0.3},
    {"mode": "adaptive", "clip_factor": 0.01},
]


def _close(a: float | None, b: float | None, where: str) -> None:
    if a is None or b is None:
        assert a is b, where
        return
    if math.isnan(a) or math.isnan(b):
        assert math.isnan(a) and math.isnan(b), f"{where}: {a} vs {b}"
        return
    assert a == b or abs(a - b) <= RTOL * max(abs(a), abs(b)), f"{where}: {a} vs {b}"


def _same_step(x: StepRecord, y: StepRecord) -> None:
    assert (x.step, x.epoch, x.clipped) == (y.step, y.epoch, y.clipped)
    for f in ("loss", "grad_norm", "clipped_grad_norm", "lr"):
        _close(getattr(x, f), getattr(y, f), f"step {x.step} {f}")
    assert len(x.layers) == len(y.layers)
    for lx, ly in zip(x.layers, y.layers, strict=True):
        assert lx.layer == ly.layer
        for f in ("grad_norm", "weight_grad_norm", "weight_norm", "update_norm", "act_mean",
                  "act_std", "dead_fraction", "saturated_fraction"):
            _close(getattr(lx, f), getattr(ly, f), f"step {x.step} layer {lx.layer} {f}")


def assert_same_run(single: TrainingResult, batched: TrainingResult) -> None:
    """Everything a run reports is the same (floats to RTOL)."""
    assert batched.stop_reason == single.stop_reason
    assert batched.steps_completed == single.steps_completed
    assert batched.total_steps == single.total_steps
    assert batched.first_non_finite == single.first_non_finite
    assert [a.kind for a in batched.alerts] == [a.kind for a in single.alerts]
    assert [a.step for a in batched.alerts] == [a.step for a in single.alerts]
    assert [r.step for r in batched.steps] == [r.step for r in single.steps]
    for x, y in zip(single.steps, batched.steps, strict=True):
        _same_step(x, y)
    assert len(batched.epochs) == len(single.epochs)
    for ex, ey in zip(single.epochs, batched.epochs, strict=True):
        assert (ex.epoch, ex.step) == (ey.epoch, ey.step)
        for f in ("train_loss", "val_loss", "val_accuracy", "train_accuracy"):
            _close(getattr(ex, f), getattr(ey, f), f"epoch {ex.epoch} {f}")


def members(base: dict[str, Any], **variants: list[Any]) -> list[TrainingSpec]:
    """One spec per combination of dotted-path values (a tiny grid)."""
    specs: list[dict[str, Any]] = [copy.deepcopy(base)]
    for path, values in variants.items():
        grown = []
        for spec in specs:
            for v in values:
                s = copy.deepcopy(spec)
                node = s
                keys = path.split("__")
                for key in keys[:-1]:
                    node = node.setdefault(key, {})
                node[keys[-1]] = v
                grown.append(s)
        specs = grown
    return [TrainingSpec.model_validate(s) for s in specs]


def check_equivalent(specs: list[TrainingSpec]) -> list[TrainingResult]:
    trainer = BatchedTrainer(specs)
    batched = trainer.run()
    for spec, res in zip(specs, batched, strict=True):
        single = Trainer(spec)
        assert_same_run(single.run(), res)
    return batched


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
@pytest.mark.parametrize("clipping", CLIPPING, ids=[c["mode"] for c in CLIPPING])
@pytest.mark.parametrize("optimizer", OPTIMIZERS,
                         ids=["sgd_nesterov", "sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_each_member_equals_its_own_run(optimizer: dict[str, Any], clipping: dict[str, Any],
                                        batch_norm: bool) -> None:
    base = copy.deepcopy(BASE)
    base["optimizer"] = optimizer
    base["clipping"] = clipping
    base["model"]["hidden"][1]["batch_norm"] = batch_norm
    lr = optimizer["lr"]
    specs = members(base, optimizer__lr=[lr / 3, lr, 3 * lr], seed=[0, 1])
    if "max_norm" in clipping:  # a per-member threshold too
        specs[0] = TrainingSpec.model_validate(
            {**specs[0].model_dump(), "clipping": {**clipping, "max_norm": 2.0}})
    check_equivalent(specs)


def test_members_differ_in_init_schedule_and_length() -> None:
    base = copy.deepcopy(BASE)
    base["model"]["init"] = {"scheme": "normal", "std": 0.1}
    specs = members(base, model__init__std=[0.05, 0.5], training__epochs=[2, 4])
    specs.append(TrainingSpec.model_validate(
        {**BASE, "schedule": {"name": "cosine", "warmup_steps": 3},
         "model": {"hidden": [{"units": 8}, {"units": 8}], "init": {"scheme": "xavier_uniform"}},
         "training": {"epochs": 3, "batch_size": 16, "max_steps": 11}}))
    results = check_equivalent(specs)
    assert sorted({r.steps_completed for r in results}) == [10, 11, 20]


def test_an_exploding_member_is_frozen_and_the_others_go_on() -> None:
    # A deep ReLU net with N(0, 1) weights: the large learning rate explodes (monitor-confirmed)
    # and the float32 huge-lr member overflows; the small ones train to the end.
    deep = {
        "data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
        "model": {"hidden": [{"units": 16}] * 6, "init": {"scheme": "normal", "std": 0.3}},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "training": {"epochs": 6, "batch_size": 16},
    }
    specs = members(deep, model__init__std=[0.1, 1.0], optimizer__lr=[0.001, 0.3])
    results = check_equivalent(specs)
    reasons = [r.stop_reason for r in results]
    assert "explosion" in reasons and "completed" in reasons
    stopped = [r for r in results if r.stop_reason == "explosion"]
    assert all(r.steps_completed < r.total_steps for r in stopped)

    no_stop = copy.deepcopy(deep)
    no_stop["monitor"] = {"stop_on_explosion": False}
    no_stop["optimizer"]["lr"] = 50.0
    specs = members(no_stop, model__init__std=[1.0, 0.1], optimizer__lr=[50.0, 0.001])
    results = check_equivalent(specs)
    assert results[0].stop_reason == "non_finite" and results[0].first_non_finite is not None
    assert results[-1].stop_reason == "completed"


def test_sinks_receive_what_a_single_run_sends() -> None:
    specs = members({**BASE, "monitor": {"record_every": 4}}, optimizer__lr=[0.05, 0.5])
    specs[1] = TrainingSpec.model_validate(
        {**specs[1].model_dump(), "training": {**BASE["training"], "epochs": 30,
                                               "early_stopping_patience": 1}})
    sinks = [MemorySink(), MemorySink(stop_after=7)]
    batched = BatchedTrainer(specs).run(sinks)
    for spec, sink, res in zip(specs, sinks, batched, strict=True):
        own = MemorySink(stop_after=7) if sink._stop_after else MemorySink()
        single = Trainer(spec).run(own)
        assert_same_run(single, res)
        assert [r.step for r in sink.steps] == [r.step for r in own.steps]
        for x, y in zip(own.steps, sink.steps, strict=True):
            _same_step(x, y)
        assert [e.epoch for e in sink.epochs] == [e.epoch for e in own.epochs]
    assert batched[1].stop_reason in ("cancelled", "early_stop")


@pytest.mark.parametrize("task", ["mse_labels", "binary", "regression"])
def test_losses_and_targets(task: str) -> None:
    base: dict[str, Any] = copy.deepcopy(BASE)
    if task == "mse_labels":
        base["loss"] = "mse"
    elif task == "binary":
        base["data"] = {"source": "synthetic", "name": "moons", "n_samples": 100}
        base["loss"] = "binary_cross_entropy"
    else:
        base["data"] = {"source": "synthetic", "name": "sine", "n_samples": 100}
        base["model"]["hidden"][0]["activation"] = "tanh"
    check_equivalent(members(base, optimizer__lr=[0.01, 0.1], seed=[0, 3]))


def test_float32_members_match_their_runs_closely() -> None:
    specs = members({**BASE, "dtype": "float32"}, optimizer__lr=[0.01, 0.3])
    for spec, res in zip(specs, BatchedTrainer(specs).run(), strict=True):
        single = Trainer(spec).run()
        assert res.stop_reason == single.stop_reason
        a = np.array([r.loss for r in single.steps])
        b = np.array([r.loss for r in res.steps])
        np.testing.assert_allclose(b, a, rtol=1e-4)


def test_final_parameters_equal_a_single_runs() -> None:
    specs = members(BASE, optimizer__lr=[0.03, 0.3])
    trainer = BatchedTrainer(specs)
    trainer.run()
    # every member completed: nothing was removed, row k is member k
    for k, spec in enumerate(specs):
        single = Trainer(spec)
        single.run()
        for (name, p), (bname, q) in zip(single.parameters(),
                                         trainer.network.member_parameters(k), strict=True):
            assert name == bname
            np.testing.assert_allclose(q, p, rtol=RTOL, atol=1e-14)


def test_stack_key_refuses_different_architectures_and_train_specs_groups_them() -> None:
    a = TrainingSpec.model_validate(BASE)
    b = TrainingSpec.model_validate({**BASE, "model": {"hidden": [{"units": 4}]}})
    c = TrainingSpec.model_validate({**BASE, "optimizer": {"name": "sgd", "lr": 0.5,
                                                           "momentum": 0.9}})
    assert stack_key(a) != stack_key(b)
    assert stack_key(a) == stack_key(c)
    with pytest.raises(ValueError, match="cannot share a stack"):
        BatchedTrainer([a, b])
    results = train_specs([a, b, c])
    for spec, res in zip([a, b, c], results, strict=True):
        assert_same_run(Trainer(spec).run(), res)
