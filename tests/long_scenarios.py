"""The long-run scenario suite: runs of 5k-50k steps, labelled by an objective rule.

Short runs (tests/scenarios.py) never reach the regime where a diagnosis goes wrong on real
work: a converged net whose gradient norm has fallen by four orders of magnitude, Adam's late
loss spikes, edge-of-stability oscillation, outlier batches hit every epoch — nor the late
explosions a guard rail must still catch (a learning-rate schedule that rises, a run that
diverges after converging, a float32 overflow late in training).

Every run is trained ONCE with ``stop_on_explosion`` off, so its whole trajectory is known,
and labelled from that trajectory by :func:`label` — the loss and non-finite values only,
never the detector:

- ``exploding``: a non-finite loss or gradient norm, or the loss *ends* (median of the last
  5 % of the records) above its initial level (median of the first 10 records) and at least
  10x above its best (the lowest median over windows of 1 % of the records): the run lost
  everything it had learned and did not get it back;
- ``transient``: not exploding, but after the loss had fallen below a tenth of its initial
  level, the median of some window (1 % of the records) rose to >= 10x the best window median
  before it and to >= a tenth of the initial loss: a setback of an order of magnitude that
  matters on the problem's scale, lasting a window, that the run recovered from;
- ``healthy``: neither.

The default run (``stop_on_explosion`` on) is identical up to the monitor's confirmation (the
trainer is deterministic), so the records up to that step are what the default run would
have recorded: the monitor's stop and the diagnosis of the stopped run are read from it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.diagnostics import DiagnosticReport, diagnose
from core.spec import TrainingSpec
from core.trainer import Trainer, TrainingResult

__all__ = ["LONG_SCENARIOS", "LongOutcome", "LongScenario", "label", "run_long"]

Spec = dict[str, Any]

# What each label accepts as a verdict. A transient spike that undid most of the progress is
# "unstable"; a healthy long run may also show recovered spikes that did not (the report then
# names them: healthy or unstable, never exploding).
ACCEPTED = {"exploding": ("exploding",), "transient": ("unstable",),
            "healthy": ("healthy", "unstable")}


def label(losses: np.ndarray, grad_norms: np.ndarray) -> str:
    """The objective label of a whole trajectory (see the module docstring)."""
    if not (np.isfinite(losses).all() and np.isfinite(grad_norms).all()):
        return "exploding"
    n = len(losses)
    w = max(5, n // 100)
    initial = float(np.median(losses[:10]))
    windows = np.array([np.median(losses[i:i + w]) for i in range(0, n - w + 1, w)])
    best = float(windows.min())
    final = float(np.median(losses[-max(10, n // 20):]))
    if final > initial and final >= 10.0 * best:
        return "exploding"
    learned = np.flatnonzero(windows < 0.1 * initial)
    if learned.size:
        after = windows[learned[0]:]
        best_before = np.minimum.accumulate(after)
        if ((after[1:] >= 10.0 * best_before[:-1]) & (after[1:] >= 0.1 * initial)).any():
            return "transient"
    return "healthy"


@dataclass(frozen=True)
class LongScenario:
    name: str
    spec: Spec
    note: str


MOONS = {"source": "synthetic", "name": "moons", "n_samples": 300}
CIRCLES = {"source": "synthetic", "name": "circles", "n_samples": 300}
SPIRALS = {"source": "synthetic", "name": "spirals", "n_samples": 300}
SINE = {"source": "synthetic", "name": "sine", "n_samples": 200}


def _h(n: int, units: int, activation: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"units": units, "activation": activation, **extra} for _ in range(n)]


def _spec(name: str, data: Spec, hidden: list[dict[str, Any]], optimizer: Spec, steps: int,
          *, batch: int = 8, seed: int = 0, init: str | None = None, dtype: str = "float64",
          **rest: Any) -> Spec:
    model: Spec = {"hidden": hidden}
    if init is not None:
        model["init"] = {"scheme": init}
    return {"name": name, "seed": seed, "dtype": dtype, "data": data, "model": model,
            "optimizer": optimizer, "monitor": {"stop_on_explosion": False},
            "training": {"epochs": 100_000, "batch_size": batch, "max_steps": steps,
                         "validation_split": 0.2}, **rest}


def _outlier_sine(target: float, n: int = 200) -> Spec:
    """Inline y = sin(x) + noise with one outlier target: a spike every epoch."""
    rs = np.random.RandomState(7)
    X = rs.uniform(-3.0, 3.0, size=(n, 1))
    y = np.sin(X[:, 0]) + 0.05 * rs.standard_normal(n)
    y[17] = target
    return {"source": "inline", "task": "regression",
            "X": X.round(4).tolist(), "y": y.round(4).tolist()}


def _scenarios() -> list[LongScenario]:
    S = LongScenario
    adam = {"name": "adam", "lr": 0.01}
    out: list[LongScenario] = []
    # ---- converged runs (the false alarms and their relatives)
    for seed in range(3):
        out.append(S(f"adam-relu-moons-s{seed}",
                     _spec(f"adam-relu-moons-s{seed}", MOONS, _h(2, 32, "relu"), adam, 9000,
                           seed=seed, init="he_normal", loss="cross_entropy"),
                     "The issue's first case: converges to ~1e-6, then late gradient noise."))
    for seed in range(2):
        out.append(S(f"adamw-relu-circles-f32-s{seed}",
                     _spec(f"adamw-relu-circles-f32-s{seed}", CIRCLES, _h(2, 32, "relu"),
                           {"name": "adamw", "lr": 0.005}, 6000, seed=seed, dtype="float32"),
                     "AdamW, float32, converged."))
    for seed in range(2):
        out.append(S(f"rmsprop-moons-s{seed}",
                     _spec(f"rmsprop-moons-s{seed}", MOONS, _h(2, 32, "relu"),
                           {"name": "rmsprop", "lr": 0.003}, 6000, seed=seed),
                     "RMSprop, converged."))
    for seed in range(3):
        out.append(S(f"relu9-spirals-clip5-s{seed}",
                     _spec(f"relu9-spirals-clip5-s{seed}", SPIRALS, _h(9, 32, "relu"),
                           {"name": "sgd", "lr": 0.01, "momentum": 0.9}, 6000, batch=32,
                           seed=seed, clipping={"mode": "global_norm", "max_norm": 5.0}),
                     "The issue's 9x32 ReLU spirals run (SGD momentum, clipping at 5)."))
    for seed in range(2):
        out.append(S(f"tanh-adam-fullbatch-s{seed}",
                     _spec(f"tanh-adam-fullbatch-s{seed}", {**SPIRALS, "n_samples": 100},
                           _h(2, 32, "tanh"), adam, 6000, batch=80, seed=seed,
                           init="xavier_normal"),
                     "The issue's full-batch tanh Adam run: loss to ~1e-3, Adam's late spikes."))
    for seed, dtype in ((0, "float64"), (1, "float32")):
        out.append(S(f"tanh-bn-wd-{dtype}",
                     _spec(f"tanh-bn-wd-{dtype}", SPIRALS, _h(4, 32, "tanh", batch_norm=True),
                           {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
                           6000, batch=32, seed=seed, init="xavier_normal", dtype=dtype),
                     "The issue's 4x32 tanh + batch norm + weight decay run."))
    for seed in range(2):
        out.append(S(f"sine-adam-f32-s{seed}",
                     _spec(f"sine-adam-f32-s{seed}", SINE, _h(2, 32, "tanh"),
                           {"name": "adam", "lr": 0.003}, 6000, batch=16, seed=seed,
                           dtype="float32"),
                     "Regression (MSE), Adam, float32."))
    out.append(S("sine-sgd-momentum",
                 _spec("sine-sgd-momentum", SINE, _h(2, 32, "tanh"),
                       {"name": "sgd", "lr": 0.02, "momentum": 0.9}, 8000, batch=16),
                 "Regression, SGD with momentum."))
    out.append(S("adagrad-blobs",
                 _spec("adagrad-blobs", {"source": "synthetic", "name": "blobs", "n_samples": 300,
                                         "n_features": 8, "n_classes": 4},
                       _h(2, 32, "elu"), {"name": "adagrad", "lr": 0.05}, 5000, batch=16),
                 "Adagrad, ELU, converged."))
    # ---- transient spikes that recover
    for target in (20.0, 50.0):
        out.append(S(f"outlier-every-epoch-{target:g}",
                     _spec(f"outlier-every-epoch-{target:g}", _outlier_sine(target, n=800),
                           _h(2, 32, "tanh"), {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                           5000, batch=16, init="xavier_normal"),
                     "One outlier target, hit once per epoch: a recovered spike every epoch."))
    out.append(S("gd-edge-of-stability",
                 _spec("gd-edge-of-stability", {**MOONS, "n_samples": 100}, _h(2, 32, "tanh"),
                       {"name": "sgd", "lr": 0.5}, 5000, batch=80, init="xavier_normal"),
                 "Full-batch gradient descent at a large step: sharpness rises to 2/lr and the "
                 "loss oscillates there (edge of stability)."))
    # ---- genuine late explosions
    for seed, dtype in ((0, "float64"), (1, "float32")):
        out.append(S(f"lr-step-up-{dtype}",
                     _spec(f"lr-step-up-{dtype}", MOONS, _h(2, 32, "relu"),
                           {"name": "sgd", "lr": 0.01, "momentum": 0.9}, 5500, seed=seed,
                           schedule={"name": "step", "step_size": 3000, "gamma": 100.0},
                           dtype=dtype),
                     "Converged by step 3000, then the schedule raises the rate x100."))
    for seed, dtype in ((0, "float64"), (1, "float32"), (2, "float32")):
        out.append(S(f"lr-exponential-rise-sine-{dtype}-s{seed}",
                     _spec(f"lr-exponential-rise-sine-{dtype}-s{seed}", SINE, _h(2, 32, "tanh"),
                           {"name": "sgd", "lr": 0.001, "momentum": 0.9}, 8000, batch=16,
                           seed=seed, schedule={"name": "exponential", "gamma": 1.0012},
                           dtype=dtype),
                     "A slowly rising rate on a regression: converges, then diverges once the "
                     "rate passes the stability limit; overflows late."))
    for seed, dtype in ((3, "float64"), (4, "float32")):
        out.append(S(f"lr-exponential-rise-{dtype}-s{seed}",
                     _spec(f"lr-exponential-rise-{dtype}-s{seed}", MOONS, _h(2, 32, "relu"),
                           {"name": "sgd", "lr": 0.003, "momentum": 0.9}, 9000, seed=seed,
                           schedule={"name": "exponential", "gamma": 1.001}, dtype=dtype),
                     "Classification with a slowly rising rate: converges, then diverges."))
    for seed in range(2):
        out.append(S(f"adam-fullbatch-sine-s{seed}",
                     _spec(f"adam-fullbatch-sine-s{seed}", {**SINE, "n_samples": 100},
                           _h(2, 32, "tanh"), {"name": "adam", "lr": 0.01}, 6000, batch=80,
                           seed=seed),
                     "Full-batch Adam on a regression converging to ~1e-3: Adam's late spikes "
                     "(the second moment decays while the gradient is tiny)."))
    out.append(S("outlier-60-adam",
                 _spec("outlier-60-adam", _outlier_sine(60.0, n=800), _h(2, 32, "tanh"),
                       {"name": "adam", "lr": 0.01}, 5000, batch=16, init="xavier_normal"),
                 "Adam with an outlier target of 60 hit every epoch: the loss is set back "
                 "for a while each time and recovers (a false-stop trap)."))
    out.append(S("outlier-300-wrecks-the-fit",
                 _spec("outlier-300-wrecks-the-fit", _outlier_sine(300.0, n=800),
                       _h(2, 32, "tanh"), {"name": "sgd", "lr": 0.05, "momentum": 0.9}, 5000,
                       batch=16, init="xavier_normal"),
                 "An outlier target of 300 at lr 0.05: the first hit throws the weights and "
                 "the fit never comes back (the loss ends far above where it started)."))
    out.append(S("regression-sgd-rising-f32",
                 _spec("regression-sgd-rising-f32", {"source": "synthetic", "name": "linear",
                                                     "n_samples": 200, "n_features": 8},
                       _h(2, 32, "relu"), {"name": "sgd", "lr": 0.001}, 6000, batch=16,
                       dtype="float32", schedule={"name": "step", "step_size": 1500,
                                                  "gamma": 10.0}),
                 "Plain SGD on a linear regression; the rate x10 every 1500 steps: fine, fine, "
                 "then a float32 overflow."))
    return out


LONG_SCENARIOS: list[LongScenario] = _scenarios()


@dataclass
class LongOutcome:
    scenario: LongScenario
    label: str
    result: TrainingResult  # the whole run (stop_on_explosion off)
    history: Any  # what the default run (stop_on_explosion on) records
    report: DiagnosticReport  # and its diagnosis
    stopped_at: int | None  # the step the default run stops at (monitor confirmation)
    onset: int | None  # for exploding runs: first step of the run-up to the explosion
    seconds: float

    @property
    def verdict(self) -> str:
        return self.report.verdict

    @property
    def correct(self) -> bool:
        return self.report.verdict in ACCEPTED[self.label]

    @property
    def latency(self) -> int | None:
        """Steps from the objective onset to the monitor's stop (exploding runs)."""
        if self.stopped_at is None or self.onset is None:
            return None
        return self.stopped_at - self.onset


def objective_onset(losses: np.ndarray, steps: np.ndarray) -> int:
    """Where the blow-up of an exploding run started, from the loss alone: the first record
    above the harm level ``best + (initial - best) / 2`` (``initial``, ``best`` as in
    :func:`label`) of the final stretch of windows (1% of the records) whose median stays above
    it, up to the first non-finite record."""
    bad = ~np.isfinite(losses)
    end = int(np.flatnonzero(bad)[0]) if bad.any() else len(losses)
    finite = losses[:end]
    if finite.size < 10:
        return int(steps[min(end, len(steps) - 1)]) if end == 0 else int(steps[0])
    w = max(5, len(losses) // 100)
    initial = float(np.median(finite[:10]))
    best = min(float(np.median(finite[i:i + w])) for i in range(0, max(1, finite.size - w + 1), w))
    level = best + 0.5 * (initial - best)
    # back from the end over windows whose median is above the level; the onset is the first
    # record above the level in the earliest of them
    i = (finite.size - 1) // w * w
    while i - w >= 0 and np.median(finite[i - w:i]) > level:
        i -= w
    above = np.flatnonzero(finite[i:] > level)
    k = i + int(above[0]) if above.size else min(end, len(steps) - 1)
    return int(steps[min(k, len(steps) - 1)])


class _Truncated:
    """A history cut at the monitor's stop: what the default run would have recorded."""

    def __init__(self, res: TrainingResult, stop_step: int) -> None:
        self.spec = res.spec
        self.steps = [r for r in res.steps if r.step <= stop_step]
        self.epochs = [e for e in res.epochs if e.step <= stop_step]
        nf = res.first_non_finite
        self.stop_reason = "non_finite" if nf is not None and nf.step <= stop_step else "explosion"
        self.first_non_finite = nf if nf is not None and nf.step <= stop_step else None
        self.alerts = [a for a in res.alerts if a.step is not None and a.step <= stop_step]


def build_long_spec(sc: LongScenario) -> TrainingSpec:
    return TrainingSpec.model_validate(copy.deepcopy(sc.spec))


def run_long(sc: LongScenario) -> LongOutcome:
    """Train the whole run, label it, and diagnose what the default run would have seen."""
    t0 = time.perf_counter()
    res = Trainer(build_long_spec(sc)).run()
    losses = np.array([r.loss for r in res.steps])
    norms = np.array([r.grad_norm for r in res.steps])
    steps = np.array([r.step for r in res.steps])
    lab = label(losses, norms)
    confirmed = [a.step for a in res.alerts
                 if a.kind in ("gradient_explosion", "non_finite") and a.severity == "critical"
                 and a.step is not None]
    stop = min(confirmed) if confirmed else None
    history: Any = _Truncated(res, stop) if stop is not None else res
    report = diagnose(history)
    onset = objective_onset(losses, steps) if lab == "exploding" else None
    return LongOutcome(sc, lab, res, history, report, stop, onset, time.perf_counter() - t0)
