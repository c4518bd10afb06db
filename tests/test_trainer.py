"""core.Trainer: the training loop, its telemetry records and why it stops.

The records are what gradwatch diagnoses, so these tests check them against their
definitions (core/telemetry.py, DESIGN.md), computed independently from the live parameters
(``trainer.parameters()``) and from ``trainer.gradients()``, rather than against numbers
copied from a run.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import pytest

import core
from core import EpochRecord, MemorySink, StepRecord, Trainer, TrainingResult, TrainingSpec

# 100 spirals, 20% held out -> 80 training examples -> 5 batches of 16 per epoch.
# The online explosion monitor's stopping rule is tested on its own (test_explosion_*, and
# core.diagnostics' tests); here it must not decide when the loop mechanics under test stop.
BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
    "model": {"hidden": [{"units": 8}, {"units": 8}]},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "training": {"epochs": 3, "batch_size": 16},
    "monitor": {"stop_on_explosion": False},
}
STEPS_PER_EPOCH = 5

# DESIGN.md's classic explosion cause: a learning rate far too large for badly scaled targets.
BADLY_SCALED: dict[str, Any] = {
    "dtype": "float32",
    "data": {"source": "synthetic", "name": "linear", "target_scale": 1e6, "n_samples": 100},
    "model": {"hidden": [{"units": 8}]},
    "optimizer": {"name": "sgd", "lr": 1.0},
    "training": {"epochs": 3, "batch_size": 16},
    "monitor": {"stop_on_explosion": False},
}

# A deep ReLU net with N(0, 1) weights whatever the width: gradients grow step after step.
DEEP_NORMAL_INIT: dict[str, Any] = {
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
    "model": {"hidden": [{"units": 16}] * 6, "init": {"scheme": "normal", "std": 1.0}},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "training": {"epochs": 10, "batch_size": 16},
}

TENSOR_KINDS = {"loss", "activation", "gradient", "weight", "update"}


# Tagged unions: a patch gives the whole object (an Adam spec has no SGD momentum).
WHOLE = {"optimizer", "schedule", "clipping", "init"}


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (lists, scalars and tagged-union objects in ``patch`` replace)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in WHOLE:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_spec(patch: dict[str, Any] | None = None, base: dict[str, Any] = BASE) -> TrainingSpec:
    return TrainingSpec.model_validate(merge(base, patch or {}))


def run(patch: dict[str, Any] | None = None, base: dict[str, Any] = BASE,
        **run_kwargs: Any) -> TrainingResult:
    return Trainer(make_spec(patch, base)).run(**run_kwargs)


def record_values(record: StepRecord) -> list[float | None]:
    values: list[float | None] = [record.loss, record.grad_norm, record.clipped_grad_norm,
                                  record.lr]
    for layer in record.layers:
        values += [layer.grad_norm, layer.weight_grad_norm, layer.weight_norm,
                   layer.update_norm, layer.act_mean, layer.act_std, layer.dead_fraction,
                   layer.saturated_fraction]
    return values


def is_finite_record(record: StepRecord) -> bool:
    return all(v is None or math.isfinite(v) for v in record_values(record))


def weights_by_layer(params: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    return [p for name, p in params if name.endswith(".weight")]


def snapshot(trainer: Trainer) -> list[np.ndarray]:
    return [p.copy() for _, p in trainer.parameters()]


def mlp_logits(params: list[tuple[str, np.ndarray]], X: np.ndarray,
               activation: Any = lambda z: np.maximum(z, 0.0)) -> np.ndarray:
    """Reference forward pass of a plain MLP (no batch norm): ``x @ W + b`` then activation."""
    named = dict(params)
    n_layers = sum(1 for name in named if name.endswith(".weight"))
    a = X.astype(np.float64)
    for i in range(n_layers):
        z = a @ named[f"layers.{i}.weight"] + named[f"layers.{i}.bias"]
        a = activation(z) if i < n_layers - 1 else z
    return z


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


class RecordingSink:
    """A sink written from scratch against the Sink protocol (no core base class)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def write_steps(self, records: list[StepRecord]) -> None:
        self.events += [("step", r) for r in records]

    def write_epoch(self, record: EpochRecord) -> None:
        self.events.append(("epoch", record))

    def should_stop(self) -> None:
        return None

    @property
    def steps(self) -> list[StepRecord]:
        return [r for kind, r in self.events if kind == "step"]

    @property
    def epochs(self) -> list[EpochRecord]:
        return [r for kind, r in self.events if kind == "epoch"]


# ---- determinism --------------------------------------------------------------------------------

DETERMINISM = {"model": {"hidden": [{"units": 8, "batch_norm": True}, {"units": 8}]},
               "optimizer": {"name": "adam", "lr": 0.01}}


def test_same_spec_and_seed_give_identical_histories() -> None:
    spec = make_spec(DETERMINISM)
    np.random.seed(1)  # the global NumPy state must play no part
    first = Trainer(spec)
    np.random.seed(2)
    second = Trainer(TrainingSpec.model_validate(spec.model_dump(mode="json")))
    np.random.random(100)
    b = second.run()  # run in the other order: trainers share no state
    np.random.seed(3)
    a = first.run()
    assert [r.loss for r in a.steps] == [r.loss for r in b.steps]
    assert [r.grad_norm for r in a.steps] == [r.grad_norm for r in b.steps]
    assert a.steps == b.steps  # every per-layer number too
    assert a.epochs == b.epochs


def test_another_seed_gives_another_history() -> None:
    a = run({**DETERMINISM, "seed": 0})
    b = run({**DETERMINISM, "seed": 1})
    assert [r.loss for r in a.steps] != [r.loss for r in b.steps]
    assert [r.grad_norm for r in a.steps] != [r.grad_norm for r in b.steps]


# ---- dtypes, record types, numbering ----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_both_dtypes_train_and_records_hold_python_numbers(dtype: str) -> None:
    spec = make_spec({"dtype": dtype, "optimizer": {"name": "adam", "lr": 0.02},
                      "data": {"name": "moons"}, "training": {"epochs": 4}})
    trainer = Trainer(spec)
    assert {p.dtype for _, p in trainer.parameters()} == {np.dtype(dtype)}
    result = trainer.run()
    assert result.stop_reason == "completed"
    for r in result.steps:
        assert type(r.step) is int and type(r.epoch) is int and type(r.clipped) is bool
        for v in record_values(r):
            assert v is None or type(v) is float, (r.step, v)
        for layer in r.layers:
            assert type(layer.layer) is int
        assert math.isfinite(r.loss)
    for e in result.epochs:
        for v in (e.train_loss, e.val_loss, e.val_accuracy, e.train_accuracy):
            assert type(v) is float
    # it learns: the last epoch's mean loss is below the first's
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss


@pytest.mark.parametrize(("validation_split", "batch_size", "per_epoch"), [
    (0.2, 16, 5),    # 80 training examples
    (0.25, 20, 4),   # 75 -> 3 full batches and one of 15
    (0.0, 30, 4),    # 100 -> 3 full batches and one of 10
    (0.0, 500, 1),   # one batch larger than the data
])
def test_steps_count_from_zero_through_the_epochs(validation_split: float, batch_size: int,
                                                 per_epoch: int) -> None:
    epochs = 3
    result = run({"training": {"epochs": epochs, "batch_size": batch_size,
                               "validation_split": validation_split}})
    total = epochs * per_epoch
    assert result.stop_reason == "completed"
    assert result.total_steps == result.steps_completed == total
    assert [r.step for r in result.steps] == list(range(total))
    assert [r.epoch for r in result.steps] == [s // per_epoch for s in range(total)]
    assert [e.epoch for e in result.epochs] == list(range(epochs))
    assert [e.step for e in result.epochs] == [(k + 1) * per_epoch - 1 for k in range(epochs)]
    for r in result.steps:  # hidden layers in order, then the output layer
        assert [layer.layer for layer in r.layers] == [0, 1, 2]


def test_max_steps_ends_training_early_but_completed() -> None:
    result = run({"training": {"epochs": 3, "max_steps": 7}})
    assert result.stop_reason == "completed"
    assert result.total_steps == result.steps_completed == 7
    assert [r.step for r in result.steps] == list(range(7))
    assert [e.step for e in result.epochs] == [4, 6]  # a full epoch, then a partial one


# ---- record_every ---------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [1, 2, 4, 7, 100])
def test_record_every_keeps_every_kth_step_and_the_first_and_last(every: int) -> None:
    sink = MemorySink()
    result = run({"monitor": {"record_every": every}}, sink=sink)
    total = 3 * STEPS_PER_EPOCH
    expected = sorted({s for s in range(total) if s % every == 0} | {0, total - 1})
    assert [r.step for r in result.steps] == expected
    assert [r.step for r in sink.steps] == expected
    assert result.steps_completed == total


def test_record_every_never_hides_a_non_finite_step() -> None:
    keep_going = {"monitor": {"stop_on_non_finite": False}}
    full = run(merge(keep_going, {"monitor": {"record_every": 1}}), base=BADLY_SCALED)
    thinned = run(merge(keep_going, {"monitor": {"record_every": 4}}), base=BADLY_SCALED)
    total = full.steps_completed
    assert total == thinned.steps_completed == full.total_steps
    non_finite = {r.step for r in full.steps if not is_finite_record(r)}
    assert non_finite, "the scenario must overflow"
    expected = sorted({s for s in range(total) if s % 4 == 0} | {0, total - 1} | non_finite)
    assert [r.step for r in thinned.steps] == expected
    by_step = {r.step: r for r in full.steps}
    for r in thinned.steps:  # the emitted records are the same records
        assert record_values(r) == pytest.approx(record_values(by_step[r.step]), nan_ok=True)


def test_record_every_emits_the_first_non_finite_step_it_stops_on() -> None:
    result = run({"monitor": {"record_every": 1000}}, base=BADLY_SCALED)
    assert result.stop_reason == "non_finite"
    assert result.first_non_finite is not None
    assert [r.step for r in result.steps] == [0, result.first_non_finite.step]


def test_record_every_emits_the_last_step_of_an_early_stopped_run() -> None:
    result = run(merge(EARLY_STOP, {"monitor": {"record_every": 4}}))
    assert result.stop_reason == "early_stop"
    assert result.steps_completed % 4 != 1, "the scenario must end on a thinned-out step"
    assert result.steps[-1].step == result.steps_completed - 1


# ---- telemetry definitions -------------------------------------------------------------------


def test_layer_gradient_norms_add_up_to_the_global_norm() -> None:
    result = run({"model": {"hidden": [{"units": 8, "batch_norm": True}, {"units": 6}]},
                  "clipping": {"mode": "global_norm", "max_norm": 0.5}})
    for r in result.steps:
        assert sum(layer.grad_norm ** 2 for layer in r.layers) == pytest.approx(
            r.grad_norm ** 2, rel=1e-9)
        for layer in r.layers:
            assert 0.0 <= layer.weight_grad_norm <= layer.grad_norm * (1 + 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_recorded_norms_are_the_pre_clip_gradient_norms(dtype: str) -> None:
    """One full-batch step: the record matches ``trainer.gradients`` on the training split."""
    max_norm = 0.01
    spec = make_spec({
        "dtype": dtype,
        "data": {"n_samples": 64},
        "model": {"hidden": [{"units": 8, "batch_norm": True}, {"units": 8}]},
        "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
        "clipping": {"mode": "global_norm", "max_norm": max_norm},
        "training": {"validation_split": 0.0, "batch_size": 64, "max_steps": 1},
    })
    rel = 1e-9 if dtype == "float64" else 1e-5
    trainer = Trainer(spec)
    names = [name for name, _ in trainer.parameters()]
    loss, grads = trainer.gradients(trainer.data.X_train, trainer.data.y_train)
    before = snapshot(trainer)
    result = trainer.run()
    (record,) = result.steps

    def sq(g: np.ndarray) -> float:
        return float(np.sum(g.astype(np.float64) ** 2))

    assert record.loss == pytest.approx(loss, rel=rel)
    total = math.sqrt(sum(sq(g) for g in grads))
    assert total > max_norm * 10, "the scenario must clip"
    assert record.grad_norm == pytest.approx(total, rel=rel)
    for layer in record.layers:
        mine = [g for n, g in zip(names, grads, strict=True) if n.split(".")[1] == str(layer.layer)]
        weight = grads[names.index(f"layers.{layer.layer}.weight")]
        assert layer.grad_norm == pytest.approx(math.sqrt(sum(sq(g) for g in mine)), rel=rel)
        assert layer.weight_grad_norm == pytest.approx(math.sqrt(sq(weight)), rel=rel)
    assert record.clipped is True
    assert record.clipped_grad_norm == pytest.approx(max_norm, rel=1e-5)
    # plain SGD: the whole parameter change is lr times the clipped gradient
    after = snapshot(trainer)
    change = math.sqrt(sum(sq(a - b) for a, b in zip(after, before, strict=True)))
    assert change == pytest.approx(0.5 * record.clipped_grad_norm, rel=max(rel, 1e-7))


def test_global_norm_clipping_bounds_the_clipped_norm_and_flags_only_real_clips() -> None:
    max_norm = 0.4
    result = run({"clipping": {"mode": "global_norm", "max_norm": max_norm},
                  "training": {"epochs": 4, "batch_size": 8}})
    clipped = unclipped = 0
    for r in result.steps:
        assert r.clipped_grad_norm <= max_norm * (1 + 1e-6)
        if r.grad_norm > max_norm * (1 + 1e-6):
            clipped += 1
            assert r.clipped
            assert r.clipped_grad_norm == pytest.approx(max_norm, rel=1e-5)
        elif r.grad_norm < max_norm * (1 - 1e-6):
            unclipped += 1
            assert not r.clipped
            assert r.clipped_grad_norm == r.grad_norm
    assert clipped and unclipped, "the scenario must both clip and not clip"


def test_without_clipping_nothing_is_clipped() -> None:
    for r in run().steps:
        assert r.clipped is False
        assert r.clipped_grad_norm == r.grad_norm


UPDATE_CASES = {
    "sgd-momentum": {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                   "weight_decay": 0.01}},
    "adam": {"optimizer": {"name": "adam", "lr": 0.01}},
    "adamw-batchnorm": {"optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
                        "model": {"hidden": [{"units": 8, "batch_norm": True}, {"units": 8}]}},
    "rmsprop-clipped": {"optimizer": {"name": "rmsprop", "lr": 0.01},
                        "clipping": {"mode": "value", "clip_value": 0.01}},
    "float32": {"dtype": "float32", "optimizer": {"name": "adagrad", "lr": 0.1}},
}


@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_update_and_weight_norms_describe_the_actual_step(case: str) -> None:
    patch = UPDATE_CASES[case]
    rel = 1e-5 if patch.get("dtype") == "float32" else 1e-9
    for k in (1, 4):  # the first step, and a later one (momentum/moments in play)
        # the first k-1 steps of a k-step run are those of a (k-1)-step run (determinism)
        trainer = Trainer(make_spec(merge(patch, {"training": {"max_steps": k}})))
        if k > 1:
            previous = Trainer(make_spec(merge(patch, {"training": {"max_steps": k - 1}})))
            previous.run()
            before = weights_by_layer(previous.parameters())
        else:
            before = [w.copy() for w in weights_by_layer(trainer.parameters())]
        record = trainer.run().steps[-1]
        assert record.step == k - 1
        after = weights_by_layer(trainer.parameters())
        for layer, w0, w1 in zip(record.layers, before, after, strict=True):
            w0_, w1_ = w0.astype(np.float64), w1.astype(np.float64)
            assert layer.update_norm == pytest.approx(np.linalg.norm(w1_ - w0_), rel=rel,
                                                      abs=1e-12)
            assert layer.weight_norm == pytest.approx(np.linalg.norm(w1_), rel=rel)
            assert layer.update_norm > 0


# ---- activation statistics ---------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_a_large_negative_bias_kills_every_relu_unit(activation: str) -> None:
    result = run({"model": {"hidden": [{"units": 8, "activation": activation}] * 2,
                            "init": {"scheme": "he_normal", "bias": -10}},
                  "training": {"epochs": 1}})
    for r in result.steps:
        assert [layer.dead_fraction for layer in r.layers[:2]] == [1.0, 1.0]


def test_a_healthy_relu_net_has_few_dead_units() -> None:
    result = run({"model": {"hidden": [{"units": 32}] * 2}, "training": {"epochs": 1}})
    for layer in result.steps[0].layers[:2]:
        assert layer.dead_fraction is not None and layer.dead_fraction < 0.5


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_huge_weights_saturate_tanh_and_sigmoid(activation: str) -> None:
    result = run({"data": {"input_scale": 100.0},
                  "model": {"hidden": [{"units": 8, "activation": activation}] * 2,
                            "init": {"scheme": "normal", "std": 100.0}},
                  "training": {"max_steps": 1}})
    for layer in result.steps[0].layers[:2]:
        assert layer.saturated_fraction is not None and layer.saturated_fraction > 0.9


def test_small_weights_do_not_saturate_tanh() -> None:
    result = run({"model": {"hidden": [{"units": 8, "activation": "tanh"}] * 2,
                            "init": {"scheme": "normal", "std": 0.01}},
                  "training": {"max_steps": 1}})
    for layer in result.steps[0].layers[:2]:
        assert layer.saturated_fraction == 0.0


def test_unit_statistics_are_none_where_they_do_not_apply() -> None:
    acts = ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "softplus", "linear"]
    result = run({"model": {"hidden": [{"units": 4, "activation": a} for a in acts]},
                  "training": {"max_steps": 2}})
    for r in result.steps:
        for a, layer in zip(acts, r.layers, strict=False):
            assert (layer.dead_fraction is not None) == (a in {"relu", "leaky_relu"}), a
            assert (layer.saturated_fraction is not None) == (a in {"tanh", "sigmoid"}), a
            assert layer.act_mean is not None and layer.act_std is not None
        output = r.layers[-1]
        assert output.layer == len(acts)
        assert output.dead_fraction is None and output.saturated_fraction is None
        assert output.act_mean is not None and output.act_std is not None


def test_activation_statistics_can_be_switched_off() -> None:
    result = run({"monitor": {"activation_stats": False}, "training": {"max_steps": 3}})
    for r in result.steps:
        for layer in r.layers:
            assert (layer.act_mean, layer.act_std, layer.dead_fraction,
                    layer.saturated_fraction) == (None, None, None, None)
            assert math.isfinite(layer.grad_norm) and math.isfinite(layer.weight_norm)


# ---- stop reasons -------------------------------------------------------------------------------


def test_a_normal_run_completes() -> None:
    result = run({"monitor": {"stop_on_explosion": True}})  # healthy: no false alarm
    assert result.stop_reason == "completed"
    assert result.first_non_finite is None
    assert result.steps_completed == result.total_steps == 3 * STEPS_PER_EPOCH


def test_overflow_stops_with_non_finite_and_says_where() -> None:
    trainer = Trainer(make_spec(base=BADLY_SCALED))
    n_layers = len(trainer.parameters()) // 2
    result = trainer.run()
    assert result.stop_reason == "non_finite"
    event = result.first_non_finite
    assert event is not None
    assert event.tensor in TENSOR_KINDS
    assert event.value in {"nan", "inf"}
    assert (event.layer is None) == (event.tensor == "loss")
    assert event.layer is None or 0 <= event.layer < n_layers
    # training stopped at that step, and that step's record was emitted
    assert result.steps_completed == event.step + 1 < result.total_steps
    assert result.steps[-1].step == event.step
    assert all(is_finite_record(r) for r in result.steps[:-1])
    bad = result.steps[-1]
    assert not is_finite_record(bad)
    if event.tensor == "loss":
        assert not math.isfinite(bad.loss)
    else:
        assert event.layer is not None
        layer = bad.layers[event.layer]
        seen = {"activation": [layer.act_mean, layer.act_std], "gradient": [layer.grad_norm],
                "weight": [layer.weight_norm], "update": [layer.update_norm]}[event.tensor]
        assert any(v is not None and not math.isfinite(v) for v in seen)
    assert event.describe()


def first_non_finite_in_computation_order(record: StepRecord) -> tuple[int | None, str]:
    """Forward (each layer's output, the logits last), the loss, backward (top layer first),
    then the updated weights."""
    for layer in record.layers:
        if any(v is not None and not math.isfinite(v) for v in (layer.act_mean, layer.act_std)):
            return layer.layer, "activation"
    if not math.isfinite(record.loss):
        return None, "loss"
    for layer in reversed(record.layers):
        if not math.isfinite(layer.grad_norm):
            return layer.layer, "gradient"
    for layer in record.layers:
        if not math.isfinite(layer.weight_norm):
            return layer.layer, "weight"
    raise AssertionError("record is finite")


def test_first_non_finite_is_the_first_in_computation_order() -> None:
    result = run(base=BADLY_SCALED)
    event = result.first_non_finite
    assert event is not None
    assert (event.layer, event.tensor) == first_non_finite_in_computation_order(result.steps[-1])


def test_a_sink_can_cancel_training() -> None:
    sink = MemorySink(stop_after=5)
    result = run({"training": {"epochs": 5}}, sink=sink)
    assert result.stop_reason == "cancelled"
    assert 5 <= result.steps_completed < result.total_steps
    assert [r.step for r in sink.steps] == list(range(result.steps_completed))
    assert result.steps == sink.steps


class StopAfterSeeing:
    """Asks to cancel once it has received the record of ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.seen: list[int] = []

    def write_steps(self, records: list[StepRecord]) -> None:
        self.seen += [r.step for r in records]

    def write_epoch(self, record: EpochRecord) -> None:
        pass

    def should_stop(self) -> str | None:
        return "cancelled" if self.step in self.seen else None


def test_cancel_takes_effect_after_the_step_the_sink_last_received() -> None:
    sink = MemorySink(stop_after=5)
    result = run({"training": {"epochs": 5}}, sink=sink)
    assert result.steps_completed == 5
    assert [r.step for r in sink.steps] == [0, 1, 2, 3, 4]
    custom = StopAfterSeeing(2)
    result = run({"training": {"epochs": 5}}, sink=custom)
    assert result.stop_reason == "cancelled"
    assert result.steps_completed == 3
    assert custom.seen == [0, 1, 2]


def test_max_runtime_zero_stops_after_the_first_step() -> None:
    trainer = Trainer(make_spec(), max_runtime=0.0)
    result = trainer.run()
    assert result.stop_reason == "max_runtime"
    assert result.steps_completed == 1
    assert [r.step for r in result.steps] == [0]


EARLY_STOP: dict[str, Any] = {
    "optimizer": {"name": "adam", "lr": 0.5},
    "training": {"epochs": 40, "batch_size": 16, "early_stopping_patience": 2},
    "monitor": {"stop_on_explosion": False},
}


def test_early_stopping_stops_when_validation_loss_stops_improving() -> None:
    patience = 2
    result = run(EARLY_STOP)
    assert result.stop_reason == "early_stop"
    val = [e.val_loss for e in result.epochs]
    assert all(v is not None for v in val)
    n = len(val)
    assert n < 40
    # the last `patience` epochs did not improve on the best before them ...
    assert min(val[n - patience:]) >= min(val[:n - patience])  # type: ignore[type-var]
    # ... and at no earlier epoch had that been true
    for end in range(patience + 1, n):
        assert min(val[end - patience:end]) < min(val[:end - patience])  # type: ignore[type-var]
    assert result.steps_completed == result.epochs[-1].step + 1 == n * STEPS_PER_EPOCH
    assert result.steps[-1].step == result.steps_completed - 1


def test_without_early_stopping_the_same_run_goes_on() -> None:
    result = run(merge(EARLY_STOP, {"training": {"early_stopping_patience": None,
                                                 "epochs": 8}}))
    assert result.stop_reason == "completed"
    assert len(result.epochs) == 8


def test_explosion_stops_training_when_the_monitor_confirms_it() -> None:
    diagnostics = pytest.importorskip("core.diagnostics")
    if not hasattr(diagnostics, "Monitor"):
        pytest.skip("core.diagnostics.Monitor is not available")
    result = run({"monitor": {"stop_on_explosion": True}}, base=DEEP_NORMAL_INIT)
    assert result.stop_reason == "explosion"
    assert result.steps_completed < result.total_steps
    assert result.alerts, "the confirming finding is reported"
    assert result.steps[-1].step == result.steps_completed - 1
    assert all(is_finite_record(r) for r in result.steps)  # caught before any overflow
    later = run({"monitor": {"stop_on_explosion": False}}, base=DEEP_NORMAL_INIT)
    assert later.stop_reason != "explosion"
    assert later.steps_completed > result.steps_completed


# ---- numerical hygiene --------------------------------------------------------------------------

OVERFLOW_SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "float32-badly-scaled": (BADLY_SCALED, {}),
    "float64-badly-scaled": (BADLY_SCALED, {"dtype": "float64"}),
    "explosion": (DEEP_NORMAL_INIT, {"training": {"epochs": 2}}),
    # inputs beyond float32's range are Inf from the start; NaN then flows through every
    # optimizer, clipping mode and activation below
    "nan-through-adam-and-global-clip": (BASE, {
        "dtype": "float32", "data": {"input_scale": 1e300}, "optimizer": {"name": "adam", "lr": 0.1},
        "model": {"hidden": [{"units": 8, "activation": "tanh", "batch_norm": True},
                             {"units": 8, "activation": "sigmoid"}]},
        "clipping": {"mode": "global_norm", "max_norm": 1.0},
        "monitor": {"stop_on_non_finite": False}, "training": {"epochs": 1}}),
    "nan-through-rmsprop-and-layer-clip": (BASE, {
        "dtype": "float32", "data": {"input_scale": 1e300},
        "optimizer": {"name": "rmsprop", "lr": 0.1, "momentum": 0.9, "centered": True},
        "model": {"hidden": [{"units": 8, "activation": "elu"},
                             {"units": 8, "activation": "softplus"}]},
        "clipping": {"mode": "layer_norm", "max_norm": 1.0},
        "monitor": {"stop_on_non_finite": False}, "training": {"epochs": 1}}),
    "nan-through-adagrad-and-agc": (BASE, {
        "dtype": "float32", "data": {"input_scale": 1e300}, "optimizer": {"name": "adagrad", "lr": 0.1},
        "model": {"hidden": [{"units": 8, "activation": "gelu"},
                             {"units": 8, "activation": "selu"}]},
        "clipping": {"mode": "adaptive"}, "schedule": {"name": "cosine"},
        "monitor": {"stop_on_non_finite": False}, "training": {"epochs": 1}}),
    "inf-inputs-cross-entropy": (BASE, {
        "dtype": "float32", "data": {"input_scale": 1e300},
        "monitor": {"stop_on_non_finite": False}, "training": {"epochs": 1}}),
    "inf-inputs-bce-value-clip": (BASE, {
        "dtype": "float32", "data": {"name": "moons", "input_scale": 1e300},
        "loss": "binary_cross_entropy", "clipping": {"mode": "value"},
        "optimizer": {"name": "adamw"},
        "monitor": {"stop_on_non_finite": False}, "training": {"epochs": 1}}),
}


@pytest.mark.parametrize("scenario", list(OVERFLOW_SCENARIOS))
def test_overflow_and_nan_raise_no_warnings_and_no_floating_point_errors(scenario: str) -> None:
    base, patch = OVERFLOW_SCENARIOS[scenario]
    spec = make_spec(patch, base)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        trainer = Trainer(spec)
        trainer.gradients(trainer.data.X_train[:8], trainer.data.y_train[:8])
        result = trainer.run()
        trainer.gradients(trainer.data.X_train[:8], trainer.data.y_train[:8])
        assert np.geterr() == {"divide": "raise", "over": "raise", "under": "raise",
                               "invalid": "raise"}, "the trainer restores the caller's errstate"
    assert result.steps_completed >= 1
    if scenario != "explosion":
        assert not all(is_finite_record(r) for r in result.steps), "the scenario must overflow"


# ---- epochs and validation -----------------------------------------------------------------------


def test_validation_figures_per_epoch_with_a_split() -> None:
    result = run({"training": {"validation_split": 0.25}})
    assert len(result.epochs) == 3
    for e in result.epochs:
        assert e.val_loss is not None and math.isfinite(e.val_loss)
        assert e.val_accuracy is not None and 0.0 <= e.val_accuracy <= 1.0
        assert e.train_accuracy is not None and 0.0 <= e.train_accuracy <= 1.0


def test_no_validation_figures_without_a_split() -> None:
    result = run({"training": {"validation_split": 0.0}})
    assert len(result.epochs) == 3
    for e in result.epochs:
        assert e.val_loss is None and e.val_accuracy is None
        assert math.isfinite(e.train_loss)


def test_regression_has_a_validation_loss_but_no_accuracy() -> None:
    result = run({"data": {"source": "synthetic", "name": "sine", "n_samples": 100}})
    for e in result.epochs:
        assert e.val_loss is not None and math.isfinite(e.val_loss)
        assert e.val_accuracy is None and e.train_accuracy is None


class EpochSnapshotSink(RecordingSink):
    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.trainer = trainer
        self.params: list[list[tuple[str, np.ndarray]]] = []

    def write_epoch(self, record: EpochRecord) -> None:
        super().write_epoch(record)
        self.params.append([(n, p.copy()) for n, p in self.trainer.parameters()])


def test_epoch_figures_match_their_definitions() -> None:
    # 75 training examples in batches of 20: the last batch (15) weighs less in the mean
    trainer = Trainer(make_spec({"training": {"validation_split": 0.25, "batch_size": 20}}))
    sink = EpochSnapshotSink(trainer)
    result = trainer.run(sink)
    X_val, y_val = trainer.data.X_val, trainer.data.y_val
    assert len(X_val) == 25
    sizes = [20, 20, 20, 15]
    for e, params in zip(result.epochs, sink.params, strict=True):
        # validation: inference-mode loss and accuracy of the weights at the epoch's end
        logits = mlp_logits(params, X_val)
        assert e.val_loss == pytest.approx(cross_entropy(logits, y_val), rel=1e-9)
        assert e.val_accuracy == pytest.approx(float(np.mean(logits.argmax(axis=1) == y_val)))
        # training loss: the mean over the epoch's examples of the per-step batch losses
        losses = [r.loss for r in result.steps if r.epoch == e.epoch]
        assert e.train_loss == pytest.approx(
            sum(n * v for n, v in zip(sizes, losses, strict=True)) / 75, rel=1e-12)


# ---- data sets and losses -------------------------------------------------------------------------

ALL_DATA = ([{"source": "synthetic", "name": n, "n_samples": 64}
             for n in ["spirals", "moons", "circles", "blobs", "xor", "linear", "sine"]]
            + [{"source": "builtin", "name": n}
               for n in ["iris", "digits", "wine", "breast_cancer", "diabetes"]])


@pytest.mark.parametrize("data", ALL_DATA, ids=lambda d: d["name"])
def test_every_data_set_trains_with_its_default_loss(data: dict[str, Any]) -> None:
    spec = TrainingSpec.model_validate({"data": data, "model": {"hidden": [{"units": 8}]},
                                        "training": {"max_steps": 3, "batch_size": 32},
                                        "monitor": {"stop_on_explosion": False}})
    result = Trainer(spec).run()
    assert result.stop_reason == "completed"
    assert [r.step for r in result.steps] == [0, 1, 2]
    assert all(is_finite_record(r) for r in result.steps)


def test_mse_on_class_labels_uses_one_hot_targets() -> None:
    spec = make_spec({"data": {"name": "spirals", "n_classes": 4}, "loss": "mse",
                      "training": {"epochs": 2}})
    trainer = Trainer(spec)
    params = trainer.parameters()
    assert params[-2][1].shape[1] == 4  # one output per class
    X, y = trainer.data.X_train, trainer.data.y_train
    loss, _ = trainer.gradients(X, y)
    onehot = np.eye(4)[y]
    assert loss == pytest.approx(float(np.mean((mlp_logits(params, X) - onehot) ** 2)),
                                 rel=1e-9)
    result = trainer.run()
    assert result.stop_reason == "completed"
    assert all(is_finite_record(r) for r in result.steps)
    assert all(e.val_accuracy is not None for e in result.epochs)


# ---- sinks ---------------------------------------------------------------------------------------


def test_keep_records_false_keeps_only_the_last_record_but_the_sink_gets_all() -> None:
    sink = MemorySink()
    result = run(sink=sink, keep_records=False)
    total = 3 * STEPS_PER_EPOCH
    assert [r.step for r in sink.steps] == list(range(total))
    assert result.steps == [sink.steps[-1]]
    assert result.final_loss == sink.steps[-1].loss


def test_a_custom_sink_receives_steps_in_order_and_epoch_records() -> None:
    sink = RecordingSink()
    assert isinstance(sink, core.Sink)
    result = run(sink=sink)
    assert [r.step for r in sink.steps] == list(range(3 * STEPS_PER_EPOCH))
    assert sink.steps == result.steps
    assert sink.epochs == result.epochs
    # each epoch record arrives after its epoch's steps and before the next epoch's
    seen_steps = -1
    for kind, rec in sink.events:
        if kind == "step":
            assert rec.step == seen_steps + 1
            seen_steps = rec.step
        else:
            assert rec.step == seen_steps
            assert seen_steps == (rec.epoch + 1) * STEPS_PER_EPOCH - 1


def test_max_records_bounds_the_kept_history_but_keeps_first_last_and_notable_steps() -> None:
    spec = core.TrainingSpec.model_validate({
        "data": {"source": "synthetic", "name": "sine", "n_samples": 64},
        "model": {"hidden": [{"units": 4, "activation": "tanh"}]},
        "training": {"epochs": 100, "batch_size": 8, "validation_split": 0.0},
        "monitor": {"stop_on_explosion": False},
    })
    full = core.Trainer(spec).run()
    sink = core.MemorySink()
    thinned = core.Trainer(spec).run(sink, max_records=50)
    assert len(sink.steps) == len(full.steps) == 800  # the sink still gets everything
    steps = [r.step for r in thinned.steps]
    assert len(steps) <= 100 and steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == 799
    stride = steps[2] - steps[1]
    assert stride > 1 and all(s % stride == 0 for s in steps[:-1])
    by_step = {r.step: r for r in full.steps}
    assert all(r.loss == by_step[r.step].loss for r in thinned.steps)


def test_max_records_keeps_the_non_finite_step() -> None:
    spec = core.TrainingSpec.model_validate({
        "dtype": "float32",
        "data": {"source": "synthetic", "name": "linear", "n_samples": 64, "target_scale": 1e6},
        "optimizer": {"name": "sgd", "lr": 1.0},
        "training": {"epochs": 50, "batch_size": 8},
        "monitor": {"stop_on_explosion": False},
    })
    result = core.Trainer(spec).run(max_records=4)
    assert result.first_non_finite is not None
    assert result.first_non_finite.step in {r.step for r in result.steps}
