"""The labelled scenario suite: specs whose diagnosis is known, and the code that runs them.

Each :class:`Scenario` is a small spec (hundreds of steps, widths <= 64) with

- the verdict(s) a correct diagnosis gives (one, except where the issue itself allows two:
  clipped high-learning-rate regression is "healthy or unstable, not exploding");
- the window ``first_bad`` in which ``report.first_bad_step`` must fall (None: no bad step);
- ``repair``: whether the top recommendation's patch, trained, must give a run that is not
  exploding.

Labels come from how each run was built (a He-initialised ReLU net is healthy by
construction; a step schedule that multiplies the learning rate by 30 at step 80 explodes
right after step 80), checked against the recorded traces; the detectors were not tuned per
scenario. Used by ``tests/test_scenarios.py`` and ``bench/diagnostics_eval.py``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.diagnostics import DiagnosticReport, apply_merge_patch, diagnose
from core.spec import TrainingSpec
from core.trainer import Trainer, TrainingResult

__all__ = ["SCENARIOS", "Outcome", "Scenario", "detection_step", "learns", "run_scenario"]

Spec = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: Spec
    verdicts: tuple[str, ...]
    first_bad: tuple[int, int] | None
    repair: bool
    note: str

    @property
    def expected(self) -> str:
        """The primary expected verdict (the first accepted one)."""
        return self.verdicts[0]


# ------------------------------------------------------------------------------ builders
def _hidden(n: int, units: int, activation: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"units": units, "activation": activation, **extra} for _ in range(n)]


SPIRALS = {"source": "synthetic", "name": "spirals", "n_samples": 320}
TRAIN = {"epochs": 20, "batch_size": 32}  # 256 training examples: 8 steps/epoch, 160 steps
SGD_M = {"name": "sgd", "lr": 0.01, "momentum": 0.9}


def _spec(name: str, data: Spec, hidden: list[dict[str, Any]], *, init: Spec | None = None,
          optimizer: Spec | None = None, training: Spec | None = None, **rest: Any) -> Spec:
    model: Spec = {"hidden": hidden}
    if init is not None:
        model["init"] = init
    return {"name": name, "seed": 0, "data": data, "model": model,
            "optimizer": optimizer or SGD_M, "training": training or TRAIN, **rest}


def _outlier_regression(target: float, step: int, batch: int = 32, n: int = 1600,
                        seed: int = 0) -> Spec:
    """Inline y = sin(x) + noise with ONE outlier target, placed so that (unshuffled) it is
    in the batch of ``step``: the data pipeline permutes the examples with the trainer's
    generator first thing (core.data), so the example at permuted position p is order[p]."""
    rs = np.random.RandomState(1234)
    X = rs.uniform(-3.0, 3.0, size=(n, 1))
    y = np.sin(X[:, 0]) + 0.1 * rs.standard_normal(n)
    order = np.random.default_rng(seed).permutation(n)
    y[order[step * batch + batch // 2]] = target
    return {"source": "inline", "task": "regression",
            "X": X.round(4).tolist(), "y": y.round(4).tolist()}


def _scenarios() -> list[Scenario]:
    lin8 = {"source": "synthetic", "name": "linear", "n_samples": 320, "n_features": 8}
    sine = {"source": "synthetic", "name": "sine", "n_samples": 320}
    one_epoch = {"epochs": 1, "batch_size": 32, "validation_split": 0.0, "shuffle": False}
    S = Scenario
    return [
        # ---------------------------------------------------------------- exploding
        S("deep-relu-normal-init",
          _spec("deep-relu-normal-init", SPIRALS, _hidden(6, 32, "relu"),
                init={"scheme": "normal", "std": 1.0}),
          ("exploding",), (0, 1), True,
          "N(0,1) weights on fan-in 32: x4 per ReLU layer, explodes at step 0."),
        S("deep-relu-normal-init-f32",
          _spec("deep-relu-normal-init-f32", SPIRALS, _hidden(8, 32, "relu"),
                init={"scheme": "normal", "std": 1.0}, dtype="float32"),
          ("exploding",), (0, 1), True, "The same, 8 layers, float32."),
        S("regression-target-x1000",
          _spec("regression-target-x1000", {**lin8, "target_scale": 1000.0},
                _hidden(2, 32, "relu")),
          ("exploding",), (0, 1), True,
          "Targets ~1e3 with a learning rate for unit targets: the first step overshoots."),
        S("regression-target-x1000-f32",
          _spec("regression-target-x1000-f32", {**lin8, "target_scale": 1000.0},
                _hidden(2, 32, "relu"), dtype="float32"),
          ("exploding",), (0, 1), True, "The same in float32."),
        S("regression-target-x100-slow",
          _spec("regression-target-x100-slow", {**lin8, "target_scale": 100.0},
                _hidden(2, 32, "relu"),
                optimizer={"name": "sgd", "lr": 0.001, "momentum": 0.9}),
          ("exploding",), (0, 15), True,
          "Targets ~1e2, smaller learning rate: grows over several steps before overflowing."),
        S("input-scale-x1000",
          _spec("input-scale-x1000", {**SPIRALS, "input_scale": 1000.0}, _hidden(2, 32, "relu")),
          ("exploding",), (0, 1), True, "Inputs ~1e3: first-layer gradients 1e3x too large."),
        S("diabetes-raw",
          _spec("diabetes-raw", {"source": "builtin", "name": "diabetes"},
                _hidden(2, 32, "relu")),
          ("exploding",), (0, 1), True,
          "Real unscaled data (features to ~300, targets 25..346), SGD 0.01."),
        S("plain-sgd-lr-too-high",
          _spec("plain-sgd-lr-too-high", sine, _hidden(2, 32, "relu"),
                optimizer={"name": "sgd", "lr": 0.3}),
          ("exploding",), (0, 1), True, "Plain SGD at lr 0.3 on a ReLU regression."),
        S("plain-sgd-linear-lr0.2",
          _spec("plain-sgd-linear-lr0.2", lin8, _hidden(2, 32, "relu"),
                optimizer={"name": "sgd", "lr": 0.2}),
          ("exploding",), (0, 1), True, "Plain SGD at lr 0.2 on 8-feature linear targets."),
        S("lr-step-up-at-80",
          _spec("lr-step-up-at-80", sine, _hidden(2, 32, "tanh"),
                init={"scheme": "xavier_normal"},
                optimizer={"name": "sgd", "lr": 0.05},
                schedule={"name": "step", "step_size": 80, "gamma": 30.0}),
          ("exploding",), (78, 83), True,
          "Healthy for 80 steps, then the schedule multiplies the learning rate by 30."),
        S("catapult-too-far-explodes",
          _spec("catapult-too-far-explodes", {**sine, "n_samples": 100}, _hidden(1, 512, "relu"),
                init={"scheme": "xavier_normal"}, optimizer={"name": "sgd", "lr": 0.45},
                training={"epochs": 160, "batch_size": 80}),
          ("exploding",), (0, 3), True,
          "The catapult net below at lr 0.45: the loss jumps, the curvature does not fall "
          "fast enough, and it overflows by step 8."),
        # ---------------------------------------------------------------- healthy
        S("deep-relu-he-init",
          _spec("deep-relu-he-init", SPIRALS, _hidden(6, 32, "relu"), init={"scheme": "he_normal"}),
          ("healthy",), None, False, "deep-relu-normal-init with He init."),
        S("deep-relu-he-init-f32",
          _spec("deep-relu-he-init-f32", SPIRALS, _hidden(8, 32, "relu"),
                init={"scheme": "he_normal"}, dtype="float32"),
          ("healthy",), None, False, "The same, 8 layers, float32."),
        S("regression-target-x1000-standardized",
          _spec("regression-target-x1000-standardized",
                {**lin8, "target_scale": 1000.0, "standardize": True}, _hidden(2, 32, "relu")),
          ("healthy",), None, False, "regression-target-x1000 with standardised data."),
        S("regression-target-x1000-clipped",
          _spec("regression-target-x1000-clipped", {**lin8, "target_scale": 1000.0},
                _hidden(2, 32, "relu"), clipping={"mode": "global_norm", "max_norm": 100.0}),
          ("healthy", "unstable"), None, False,
          "regression-target-x1000 with global-norm clipping: steps are bounded, pre-clip "
          "norms grow while the weights grow to the target scale, then training proceeds."),
        S("tanh-xavier",
          _spec("tanh-xavier", SPIRALS, _hidden(4, 32, "tanh"), init={"scheme": "xavier_normal"},
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}),
          ("healthy",), None, False, "Tanh with Xavier init."),
        S("adam-relu",
          _spec("adam-relu", SPIRALS, _hidden(3, 32, "relu"), optimizer={"name": "adam", "lr": 0.01}),
          ("healthy",), None, False, "Adam, He init."),
        S("batch-norm-rescues-normal-init",
          _spec("batch-norm-rescues-normal-init", SPIRALS,
                _hidden(6, 32, "relu", batch_norm=True), init={"scheme": "normal", "std": 1.0}),
          ("healthy",), None, False, "deep-relu-normal-init with batch norm on every layer."),
        S("rmsprop-moons",
          _spec("rmsprop-moons", {"source": "synthetic", "name": "moons", "n_samples": 320},
                _hidden(2, 32, "relu"), optimizer={"name": "rmsprop", "lr": 0.003}),
          ("healthy",), None, False, "RMSprop on moons."),
        S("adagrad-blobs",
          _spec("adagrad-blobs", {"source": "synthetic", "name": "blobs", "n_samples": 320,
                                  "n_features": 8, "n_classes": 4, "standardize": True},
                _hidden(2, 32, "elu"), optimizer={"name": "adagrad", "lr": 0.05}),
          ("healthy",), None, False, "Adagrad, ELU, 4-class blobs."),
        S("nesterov-xor-gelu",
          _spec("nesterov-xor-gelu", {"source": "synthetic", "name": "xor", "n_samples": 320},
                _hidden(2, 32, "gelu"),
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True}),
          ("healthy",), None, False, "Nesterov SGD, GELU, XOR."),
        S("selu-lecun-circles",
          _spec("selu-lecun-circles", {"source": "synthetic", "name": "circles", "n_samples": 320},
                _hidden(4, 32, "selu"), init={"scheme": "lecun_normal"},
                optimizer={"name": "sgd", "lr": 0.02, "momentum": 0.9}),
          ("healthy",), None, False, "SELU with LeCun init (self-normalising)."),
        S("digits-adam-f32",
          _spec("digits-adam-f32", {"source": "builtin", "name": "digits", "standardize": True},
                _hidden(2, 64, "relu"), optimizer={"name": "adam", "lr": 0.001},
                training={"epochs": 4, "batch_size": 64}, dtype="float32"),
          ("healthy",), None, False, "Real data: 8x8 digits, Adam, float32."),
        S("adamw-cosine-warmup",
          _spec("adamw-cosine-warmup", SPIRALS, _hidden(3, 64, "leaky_relu"),
                optimizer={"name": "adamw", "lr": 0.01},
                schedule={"name": "cosine", "warmup_steps": 20}),
          ("healthy",), None, False, "AdamW with warmup and cosine decay."),
        S("one-transient-spike",
          _spec("one-transient-spike", _outlier_regression(80.0, step=25),
                _hidden(2, 32, "tanh"), init={"scheme": "xavier_normal"},
                optimizer={"name": "sgd", "lr": 0.005, "momentum": 0.9}, training=one_epoch),
          ("healthy",), None, False,
          "One outlier target (80 vs ~1) at step 25: one gradient spike, the loss does not "
          "lose ground."),
        S("value-clipping-sine",
          _spec("value-clipping-sine", sine, _hidden(3, 32, "tanh"),
                init={"scheme": "xavier_uniform"}, clipping={"mode": "value", "clip_value": 0.5},
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}),
          ("healthy",), None, False, "Tanh regression with value clipping."),
        # ---------------------------------------------------------------- vanishing
        S("deep-sigmoid-small-init",
          _spec("deep-sigmoid-small-init", SPIRALS, _hidden(6, 32, "sigmoid"),
                init={"scheme": "normal", "std": 0.05},
                optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}),
          ("vanishing",), (0, 0), False,
          "sigmoid' <= 1/4 and small weights: the gradient shrinks ~70x per layer."),
        S("deep-sigmoid-xavier",
          _spec("deep-sigmoid-xavier", SPIRALS, _hidden(8, 32, "sigmoid"),
                init={"scheme": "xavier_normal"},
                optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}),
          ("vanishing",), (0, 0), False, "Even with Xavier, 8 sigmoid layers shrink it 4x each."),
        S("deep-tanh-tiny-init",
          _spec("deep-tanh-tiny-init", SPIRALS, _hidden(8, 32, "tanh"),
                init={"scheme": "normal", "std": 0.02}),
          ("vanishing",), (0, 0), False, "Tanh with N(0, 0.02^2): gain 0.11 per layer."),
        S("tanh-huge-weights",
          _spec("tanh-huge-weights", SPIRALS, _hidden(4, 64, "tanh"),
                init={"scheme": "normal", "std": 10.0}),
          ("vanishing",), (0, 60), False,
          "Huge weights saturate every tanh unit: large weights, vanishing gradients (a "
          "detector looking at weight size would call this exploding)."),
        S("tanh-saturated-by-bias",
          _spec("tanh-saturated-by-bias", SPIRALS, _hidden(4, 64, "tanh"),
                init={"scheme": "xavier_normal", "bias": 4.0},
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}),
          ("vanishing",), (0, 0), False, "Bias 4 pins tanh at +1: derivative ~1e-3."),
        # ---------------------------------------------------------------- stalled
        S("dying-relu-negative-bias",
          _spec("dying-relu-negative-bias", SPIRALS, _hidden(3, 32, "relu"),
                init={"scheme": "he_normal", "bias": -3.0},
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}),
          ("stalled",), (0, 0), False, "Bias -3: every ReLU is off for every input."),
        S("learning-rate-too-small",
          _spec("learning-rate-too-small", SPIRALS, _hidden(3, 32, "relu"),
                optimizer={"name": "sgd", "lr": 1e-6}),
          ("stalled",), (0, 0), False, "lr 1e-6: updates ~1e-7 of the weights, flat loss."),
        S("relu-tiny-init",
          _spec("relu-tiny-init", SPIRALS, _hidden(5, 32, "relu"),
                init={"scheme": "normal", "std": 0.001}),
          ("stalled",), (0, 40), False,
          "N(0, 1e-3) ReLU: the signal is gone after two layers and the units die."),
        # ---------------------------------------------------------------- unstable
        S("outlier-spike-sets-loss-back",
          _spec("outlier-spike-sets-loss-back", _outlier_regression(300.0, step=25),
                _hidden(2, 32, "tanh"), init={"scheme": "xavier_normal"},
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, training=one_epoch),
          ("unstable",), (24, 26), False,
          "One outlier target (300 vs ~1) at step 25 throws the weights; the loss loses "
          "ground for many steps, then recovers."),
        S("catapult-wide-relu",
          _spec("catapult-wide-relu", {**sine, "n_samples": 100}, _hidden(1, 512, "relu"),
                init={"scheme": "xavier_normal"}, optimizer={"name": "sgd", "lr": 0.35},
                training={"epochs": 160, "batch_size": 80}),
          ("unstable",), (0, 3), False,
          "Full-batch GD on a wide ReLU net at a step past 2/curvature: the loss jumps ~7x in "
          "the first steps, the curvature falls, it recovers (the catapult phase, Lewkowycz "
          "et al. 2020). Not an explosion: the run must not be stopped."),
        S("outlier-spike-every-epoch",
          _spec("outlier-spike-every-epoch", _outlier_regression(300.0, step=10),
                _hidden(2, 32, "tanh"), init={"scheme": "xavier_normal"},
                optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                training={**one_epoch, "epochs": 3}),
          ("unstable",), (9, 11), False, "The same outlier hit in every epoch."),
    ]


SCENARIOS: list[Scenario] = _scenarios()


# ------------------------------------------------------------------------------ running
def detection_step(result: TrainingResult) -> int | None:
    """The step at which the online monitor raised its first critical alert, if any."""
    steps = [a.step for a in result.alerts
             if getattr(a, "severity", None) == "critical" and a.step is not None]
    return min(steps) if steps else None


@dataclass
class Outcome:
    scenario: Scenario
    result: TrainingResult
    report: DiagnosticReport
    detected_at: int | None
    seconds: float
    repaired: DiagnosticReport | None = None
    repaired_stop: str | None = None
    repaired_patch: dict[str, Any] = field(default_factory=dict)
    repaired_learns: bool | None = None  # final loss <= 0.8 x initial loss

    @property
    def verdict(self) -> str:
        return self.report.verdict

    @property
    def correct(self) -> bool:
        return self.report.verdict in self.scenario.verdicts

    @property
    def first_bad_ok(self) -> bool:
        w = self.scenario.first_bad
        fb = self.report.first_bad_step
        if w is None:
            return fb is None or self.report.verdict in self.scenario.verdicts
        return fb is not None and w[0] <= fb <= w[1]

    @property
    def latency(self) -> int | None:
        """Steps from the diagnosed onset to the online monitor's first critical alert."""
        if self.detected_at is None or self.report.first_bad_step is None:
            return None
        return self.detected_at - self.report.first_bad_step

    @property
    def repair_ok(self) -> bool | None:
        """The repaired run no longer explodes (and, see ``repaired_learns``, learns)."""
        if self.repaired is None:
            return None
        return self.repaired.verdict != "exploding"


def build_spec(sc: Scenario, **monitor: Any) -> TrainingSpec:
    spec = copy.deepcopy(sc.spec)
    if monitor:
        spec.setdefault("monitor", {}).update(monitor)
    return TrainingSpec.model_validate(spec)


def run_scenario(sc: Scenario, *, repair: bool = True, **monitor: Any) -> Outcome:
    """Train the scenario, diagnose it, and (if asked) train its top recommendation."""
    spec = build_spec(sc, **monitor)
    t0 = time.perf_counter()
    result = Trainer(spec).run()
    report = diagnose(result)
    out = Outcome(sc, result, report, detection_step(result), time.perf_counter() - t0)
    if repair and sc.repair and report.recommendations:
        patch = report.recommendations[0].spec_patch
        repaired_spec = TrainingSpec.model_validate(
            apply_merge_patch(spec.model_dump(mode="json"), patch))
        res2 = Trainer(repaired_spec).run()
        out.repaired = diagnose(res2)
        out.repaired_stop = res2.stop_reason
        out.repaired_patch = patch
        out.repaired_learns = learns(res2)
    return out


def learns(result: TrainingResult) -> bool:
    """The run learned: its final loss (median of the last 10% of the records) is at most
    0.8x its initial loss (median of the first 3 records)."""
    losses = np.array([r.loss for r in result.steps])
    if losses.size < 3 or not np.isfinite(losses).all():
        return False
    final = float(np.median(losses[-max(1, losses.size // 10):]))
    return final <= 0.8 * float(np.median(losses[:3]))
