"""core.diagnostics: monitor, detectors, forecast, merge patches, reports and preflight."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core
from core.diagnostics import (
    DiagnosticReport,
    Finding,
    Monitor,
    PreflightReport,
    apply_merge_patch,
    create_merge_patch,
    diagnose,
    preflight,
)
from core.diagnostics.analytic import init_profile
from core.diagnostics.forecast import overflow_limit
from core.spec import TrainingSpec
from core.telemetry import EpochRecord, LayerRecord, NonFiniteEvent, StepRecord

SPIRALS = {"source": "synthetic", "name": "spirals", "n_samples": 320}


def spec_of(**over: Any) -> TrainingSpec:
    body: dict[str, Any] = {"data": SPIRALS,
                            "model": {"hidden": [{"units": 16}, {"units": 16}]}}
    body.update(over)
    return TrainingSpec.model_validate(body)


def record(step: int, grad: float, loss: float, *, update: float = 1e-3, weight: float = 1.0,
           layers: int = 3) -> StepRecord:
    """A hand-made step: the global norm spread evenly over ``layers`` layers."""
    per = grad / math.sqrt(layers) if math.isfinite(grad) else grad
    return StepRecord(
        step=step, epoch=0, loss=loss, grad_norm=grad, clipped_grad_norm=grad, lr=0.01,
        clipped=False,
        layers=[LayerRecord(i, per, per, weight, update, 0.0, 1.0, None, None)
                for i in range(layers)],
    )


@dataclass
class History:
    spec: TrainingSpec
    steps: list[StepRecord]
    epochs: list[EpochRecord] = field(default_factory=list)
    stop_reason: str | None = "completed"
    first_non_finite: NonFiniteEvent | None = None
    alerts: list[Finding] = field(default_factory=list)


def noisy_healthy(n: int, seed: int = 0) -> list[StepRecord]:
    """Mini-batch noise around a slowly falling loss: log-normal norms, sigma 0.5."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        g = float(np.exp(rng.normal(0.0, 0.5)))
        loss = float(1.1 * math.exp(-t / 300) * np.exp(rng.normal(0.0, 0.3)))
        out.append(record(t, g, loss))
    return out


# ------------------------------------------------------------------------------ monitor
def test_monitor_confirms_runaway_growth_once_an_order_of_magnitude_above_healthy() -> None:
    """x1.6 per step from the healthy level: 10x the healthy scale after 5 steps; confirmed
    when it has stayed there (harmed, updates growing along) for three records."""
    mon = Monitor(spec_of())
    onset = 40
    alerts: list[Finding] = []
    for r in noisy_healthy(onset):
        alerts += mon.observe(r)
    assert not mon.explosion_confirmed
    g, loss, u = 1.0, 0.5, 1e-3
    for t in range(onset, onset + 20):
        g, loss, u = g * 1.6, loss * 1.8, u * 1.6  # runaway: gradient, loss and steps grow
        alerts += mon.observe(record(t, g, loss, update=u))
        if mon.explosion_confirmed:
            break
    assert mon.explosion_confirmed
    assert mon.confirmed_at is not None and mon.confirmed_at - onset <= 7
    crit = [a for a in alerts if a.severity == "critical"]
    assert crit[0].kind == "gradient_explosion"
    assert crit[0].evidence["rule"] == "runaway"
    assert crit[0].evidence["steps_to_overflow"] is not None


def test_monitor_does_not_confirm_a_one_off_spike() -> None:
    mon = Monitor(spec_of())
    recs = noisy_healthy(200, seed=1)
    recs[100] = record(100, 500.0, 40.0, update=0.5)  # one huge step, then back to normal
    for r in recs:
        mon.observe(r)
    assert not mon.explosion_confirmed


@pytest.mark.parametrize("seed", range(5))
def test_monitor_never_confirms_on_long_noisy_healthy_runs(seed: int) -> None:
    mon = Monitor(spec_of())
    for r in noisy_healthy(3000, seed=seed):
        mon.observe(r)
    assert not mon.explosion_confirmed
    assert not [a for a in mon.alerts if a.severity == "critical"]


def test_monitor_ignores_growth_when_clipping_bounds_the_steps() -> None:
    """The pre-clip norm grows and the loss rises (a few x, as it does while clipped steps
    move the weights to a new scale), but the updates stay bounded: no self-feeding loop."""
    mon = Monitor(spec_of())
    for r in noisy_healthy(20):
        mon.observe(r)
    g, loss = 1.0, 1.0
    for t in range(20, 40):
        g, loss = g * 1.8, min(loss * 1.3, 4.0)
        mon.observe(record(t, g, loss, update=1e-3))
    assert not mon.explosion_confirmed


@pytest.mark.parametrize(("where", "tensor"), [("loss", "loss"), ("grad", "gradient"),
                                               ("weight", "weight")])
def test_monitor_reports_the_first_non_finite_value_with_its_tensor(where: str, tensor: str) -> None:
    mon = Monitor(spec_of())
    for r in noisy_healthy(10):
        mon.observe(r)
    bad = record(10, 1.0, 1.0)
    if where == "loss":
        bad.loss = math.nan
    elif where == "grad":
        bad.grad_norm = math.inf
        bad.layers[2].grad_norm = math.inf
    else:
        bad.layers[1].weight_norm = math.inf
    alerts = mon.observe(bad)
    assert mon.explosion_confirmed and mon.confirmed_at == 10
    assert alerts[0].kind == "non_finite"
    assert alerts[0].evidence["tensor"] == tensor
    assert alerts[0].evidence["value"] == ("nan" if where == "loss" else "inf")
    assert mon.observe(record(11, 1.0, 1.0)) == []  # reported once


def test_monitor_keeps_constant_state_however_long_the_run() -> None:
    """observe() does O(layers) work on running state: nothing grows with the run (its cost
    per step is measured in bench/diagnostics_eval.py, not asserted here)."""
    spec = spec_of(model={"hidden": [{"units": 16}] * 9})
    mon = Monitor(spec)
    sizes = []
    for t in range(5000):
        mon.observe(record(t, 1.0 + 0.01 * (t % 7), 1.0, layers=10))
        if t in (100, 4999):
            sizes.append(sum(len(v) for v in (mon.state.recent, mon.state._warm,
                                              mon.state._warm_loss, mon.alerts)))
    assert sizes[0] == sizes[1]


def test_diagnose_finds_non_finite_values_in_the_records_without_an_event() -> None:
    spec = spec_of()
    recs = noisy_healthy(30)
    g, loss = 1.0, 1.0
    for t in range(30, 40):
        g, loss = g * 30, loss * 50
        recs.append(record(t, g, loss, update=0.9))
    recs.append(record(40, math.inf, math.nan))
    rep = diagnose(History(spec, recs, stop_reason="non_finite"))
    assert rep.verdict == "exploding"
    nf = next(f for f in rep.findings if f.kind == "non_finite")
    assert nf.step == 40 and nf.evidence["value"] == "nan" and nf.evidence["tensor"] == "loss"
    assert rep.first_bad_step is not None and 29 <= rep.first_bad_step <= 31


def test_diagnose_is_provisional_while_the_run_is_in_progress() -> None:
    rep = diagnose(History(spec_of(), noisy_healthy(50), stop_reason=None))
    assert rep.final is False
    assert "provisional" in rep.summary
    empty = diagnose(History(spec_of(), [], stop_reason=None))
    assert empty.steps_analyzed == 0 and empty.final is False
    one_in_five = [r for r in noisy_healthy(500) if r.step % 5 == 0]  # record_every 5
    rep = diagnose(History(spec_of(), one_in_five, stop_reason=None))
    assert "(provisional, 496 steps so far)" in rep.summary and rep.steps_analyzed == 100


def _train(body: dict[str, Any]) -> Any:
    return core.Trainer(TrainingSpec.model_validate(body)).run()


EXPLODING = {"name": "x", "data": {**SPIRALS, "input_scale": 1000.0},
             "model": {"hidden": [{"units": 32}, {"units": 32}]},
             "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
             "training": {"epochs": 5, "batch_size": 32},
             "monitor": {"stop_on_explosion": False}}


def test_diagnose_works_on_thinned_records_as_the_service_stores_them() -> None:
    result = _train(EXPLODING)
    full = diagnose(result)
    thinned = [r for r in result.steps
               if r.step % 5 == 0 or r.step == result.steps[-1].step
               or not math.isfinite(r.grad_norm)]
    # the online monitor saw every step: with its alerts the thinned history tells the same
    rep = diagnose(History(result.spec, thinned, result.epochs, result.stop_reason, None,
                           alerts=result.alerts))
    assert full.verdict == rep.verdict == "exploding"
    assert rep.steps_analyzed == len(thinned)
    # without them the 4-step explosion falls between records: what is left is a dead network
    blind = diagnose(History(result.spec, thinned, result.epochs, result.stop_reason, None))
    assert blind.verdict == "stalled"


def test_diagnose_accepts_a_spec_given_as_json() -> None:
    result = _train(EXPLODING)
    rep = diagnose(History(result.spec.model_dump(mode="json"), result.steps,  # type: ignore[arg-type]
                           result.epochs, result.stop_reason, result.first_non_finite))
    assert rep.verdict == "exploding"


def test_report_json_carries_non_finite_numbers_as_strings() -> None:
    rep = DiagnosticReport(
        verdict="exploding", summary="s", first_bad_step=3, final=True, steps_analyzed=4,
        findings=[Finding(kind="non_finite", severity="critical", step=3, layers=[1],
                          evidence={"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5,
                                    "e": "gradient", "f": None}, message="m")],
    )
    body = json.loads(rep.model_dump_json())
    ev = body["findings"][0]["evidence"]
    assert ev == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.5, "e": "gradient",
                  "f": None}


def test_every_recommendation_is_a_merge_patch_that_validates_to_the_repaired_spec() -> None:
    bodies = [
        EXPLODING,
        {"data": SPIRALS, "model": {"hidden": [{"units": 16, "activation": "sigmoid"}] * 6,
                                    "init": {"scheme": "normal", "std": 0.05}},
         "clipping": {"mode": "value", "clip_value": 2.0}, "training": {"epochs": 5}},
        {"data": SPIRALS, "model": {"hidden": [{"units": 32, "init": {"scheme": "normal",
                                                                       "std": 1.0}}] * 6},
         "training": {"epochs": 3}},
    ]
    for body in bodies:
        result = _train(body)
        rep = diagnose(result)
        assert rep.recommendations
        source = result.spec.model_dump(mode="json")
        for rec in rep.recommendations:
            patched = apply_merge_patch(source, rec.spec_patch)
            repaired = TrainingSpec.model_validate(patched)
            assert repaired != result.spec
            # JSON round trip: the patch is plain JSON (what POST /repair receives)
            again = apply_merge_patch(source, json.loads(json.dumps(rec.spec_patch)))
            assert TrainingSpec.model_validate(again) == repaired


def test_clipping_threshold_comes_from_the_pre_explosion_norms() -> None:
    body = {"data": {"source": "synthetic", "name": "sine", "n_samples": 320},
            "model": {"hidden": [{"units": 32, "activation": "tanh"}] * 2,
                      "init": {"scheme": "xavier_normal"}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "schedule": {"name": "step", "step_size": 80, "gamma": 30.0},
            "training": {"epochs": 20, "batch_size": 32}}
    result = _train(body)
    rep = diagnose(result)
    assert rep.verdict == "exploding"
    clip = next(r for r in rep.recommendations if r.action == "clip_gradients")
    onset = rep.first_bad_step
    assert onset is not None
    pre = [r.grad_norm for r in result.steps if r.step < onset]
    max_norm = clip.spec_patch["clipping"]["max_norm"]
    assert np.percentile(pre, 10) <= max_norm <= np.percentile(pre, 90)


# ------------------------------------------------------------------------------ merge patch
RFC7396_EXAMPLES = [  # RFC 7396, Appendix A
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7396_EXAMPLES)
def test_apply_merge_patch_matches_rfc7396_appendix_a(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(target)
    assert apply_merge_patch(target, patch) == result
    assert target == before  # inputs untouched


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


def _no_null_members(x: Any) -> bool:
    if isinstance(x, dict):
        return all(v is not None and _no_null_members(v) for v in x.values())
    return True


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=3), _json, max_size=4),
       st.dictionaries(st.text(max_size=3), _json, max_size=4))
def test_create_merge_patch_takes_source_to_target(source: dict[str, Any],
                                                   target: dict[str, Any]) -> None:
    if not _no_null_members(target):
        return  # a merge patch cannot set an object member to null
    assert apply_merge_patch(source, create_merge_patch(source, target)) == target


# ------------------------------------------------------------------------------ forecast
def test_forecast_extrapolates_steady_growth_to_the_overflow_step() -> None:
    spec = spec_of()
    mon = Monitor(spec)
    limit = math.log(overflow_limit("float64"))
    g = 1.0
    for t in range(8):
        mon.observe(record(t, g, 1.0))
        g *= 10.0
    fc = mon.forecaster.forecast(7)
    assert fc is not None and fc.series in ("grad_norm", "loss")
    # 1e7 now, x10 per step: reaches 1.34e154 after ~147 more steps
    expected = (limit - math.log(1e7)) / math.log(10.0)
    assert fc.steps_to_overflow == pytest.approx(expected, rel=0.05)
    assert overflow_limit("float32") == pytest.approx(3.4028235e38, rel=1e-6)


# ------------------------------------------------------------------------------ preflight
def test_preflight_flags_a_deep_relu_net_with_unit_normal_init_and_not_he() -> None:
    hidden = [{"units": 32, "activation": "relu"}] * 6
    bad = preflight({"data": SPIRALS, "model": {"hidden": hidden,
                                                "init": {"scheme": "normal", "std": 1.0}}})
    good = preflight({"data": SPIRALS, "model": {"hidden": hidden,
                                                 "init": {"scheme": "he_normal"}}})
    assert isinstance(bad, PreflightReport)
    assert bad.risk == "critical" and good.risk == "low"
    assert bad.predicted_depth_gain > 100 and 0.3 < good.predicted_depth_gain < 3
    assert bad.recommendations[0].action == "change_init"
    assert bad.recommendations[0].spec_patch["model"]["init"]["scheme"] == "he_normal"
    assert bad.parameter_count == TrainingSpec.model_validate(
        {"data": SPIRALS, "model": {"hidden": hidden}}).parameter_count()
    assert bad.flops_per_step > 0 and bad.memory_bytes > 0
    assert json.loads(bad.model_dump_json())["risk"] == "critical"


def test_preflight_prediction_agrees_with_the_probe_on_a_vanishing_sigmoid_net() -> None:
    rep = preflight({"data": SPIRALS,
                     "model": {"hidden": [{"units": 32, "activation": "sigmoid"}] * 8,
                               "init": {"scheme": "xavier_normal"}}})
    assert rep.risk in ("high", "critical")
    assert rep.measured_amplification is not None
    # first-layer / output-layer weight-gradient ratio: predicted and measured within 10x
    ratio = rep.predicted_amplification / rep.measured_amplification
    assert 0.1 < ratio < 10
    assert rep.predicted_amplification < 1e-3


def test_mean_field_profile_matches_measured_activation_growth() -> None:
    spec = TrainingSpec.model_validate({
        "data": SPIRALS, "model": {"hidden": [{"units": 64, "activation": "relu"}] * 5,
                                   "init": {"scheme": "normal", "std": 0.5}}})
    prof = init_profile(spec, input_rms=1.0)
    predicted = [p.forward_gain for p in prof[1:-1]]
    assert all(g == pytest.approx(0.5 * math.sqrt(64 / 2), rel=0.05) for g in predicted)


def test_a_healthy_runs_optional_clipping_leaves_its_early_training_untouched() -> None:
    """A converged run's gradient norm ends three orders of magnitude below where it
    started; a few transient spikes late in the run are harmless (verdict healthy). Clipping
    offered as hardening sits at the top of the normal range, not at the run's median (which
    the converged phase dominates, and which would throttle every early step)."""
    rng = np.random.default_rng(1)
    n = 6000
    steps = []
    for t in range(n):
        g = float(10 ** (-3 * t / n) * np.exp(rng.normal(0.0, 0.3)))
        if t in (4200, 4900, 5600):  # a one-step spike, ~300x the local norm
            g *= 300.0
        loss = float(1.1 * math.exp(-t / 800) + 0.01)
        steps.append(record(t, g, loss))
    rep = diagnose(History(spec_of(), steps))
    kinds = {f.kind for f in rep.findings}
    assert rep.verdict == "healthy" and "gradient_spike" in kinds, (rep.verdict, kinds)
    clip = next(r for r in rep.recommendations if r.action == "clip_gradients")
    max_norm = clip.spec_patch["clipping"]["max_norm"]
    early = [s.grad_norm for s in steps[:600]]
    assert max_norm >= np.percentile(early, 99)  # normal steps of the whole run untouched
    assert max_norm < max(s.grad_norm for s in steps[4000:])  # the spikes are capped
    assert "Optional: clip gradients" in rep.summary and "First fix" not in rep.summary


def test_a_diverged_loss_is_not_called_flat() -> None:
    """Regression targets of RMS ~450 and no standardisation: the loss overflows. It
    diverged (loss_divergence); 'the loss ended at 6e+93, the chance level: not learning'
    misread it."""
    result = _train({"data": {"source": "synthetic", "name": "linear", "n_samples": 320,
                              "n_features": 8, "target_scale": 100.0},
                     "model": {"hidden": [{"units": 32}, {"units": 32}],
                               "init": {"scheme": "he_normal"}},
                     "optimizer": {"name": "sgd", "lr": 0.0005, "momentum": 0.9},
                     "loss": "mse", "training": {"epochs": 20, "batch_size": 32},
                     "monitor": {"stop_on_explosion": False}})
    rep = diagnose(result)
    kinds = {f.kind for f in rep.findings}
    assert rep.verdict == "exploding" and "loss_divergence" in kinds, kinds
    assert "flat_loss" not in kinds
