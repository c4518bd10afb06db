"""The labelled scenario suite (tests/scenarios.py): verdicts, onsets and repairs.

Each scenario is trained, diagnosed and, where labelled, repaired with its top recommendation.
``test_suite_meets_the_targets`` prints the confusion matrix and the detection latencies
(run with ``-s`` to see them) and checks the issue's targets on the whole suite.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest
from scenarios import SCENARIOS, Outcome, Scenario, build_spec, run_scenario

from core.diagnostics import diagnose
from core.diagnostics.report import fmt
from core.trainer import Trainer, TrainingResult

VERDICTS = ["healthy", "exploding", "vanishing", "unstable", "stalled"]
_CACHE: dict[str, Outcome] = {}


def outcome(sc: Scenario) -> Outcome:
    if sc.name not in _CACHE:
        _CACHE[sc.name] = run_scenario(sc)
    return _CACHE[sc.name]


def test_suite_has_at_least_30_labelled_scenarios_of_every_verdict() -> None:
    assert len(SCENARIOS) >= 30
    assert len({sc.name for sc in SCENARIOS}) == len(SCENARIOS)
    assert {sc.expected for sc in SCENARIOS} == set(VERDICTS)
    assert sum(sc.repair for sc in SCENARIOS) >= 10


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.name for sc in SCENARIOS])
def test_scenario_is_diagnosed_as_labelled(sc: Scenario) -> None:
    out = outcome(sc)
    rep = out.report
    assert rep.verdict in sc.verdicts, f"{sc.name}: {rep.summary}"
    assert out.first_bad_ok, f"{sc.name}: first_bad_step {rep.first_bad_step} not in {sc.first_bad}"
    assert rep.final
    if rep.verdict != "healthy":
        assert rep.findings and rep.findings[0].severity == "critical"
        assert rep.recommendations, f"{sc.name}: a {rep.verdict} run must come with a fix"
    if sc.expected == "healthy":
        assert out.detected_at is None, "the online monitor raised a critical alert on a healthy run"
    if sc.repair:
        assert out.repaired is not None, f"{sc.name}: no recommendation to train"
        assert out.repair_ok, (f"{sc.name}: top fix {out.repaired_patch} still explodes: "
                               f"{out.repaired.summary}")


def test_suite_meets_the_targets() -> None:
    outs = [outcome(sc) for sc in SCENARIOS]
    matrix: Counter[tuple[str, str]] = Counter((o.scenario.expected if not o.correct
                                                 else o.verdict, o.verdict) for o in outs)
    width = max(len(v) for v in VERDICTS) + 2
    lines = ["", "confusion matrix (rows: label, columns: diagnosed verdict)",
             " " * width + "".join(v[:9].rjust(11) for v in VERDICTS)]
    for exp in VERDICTS:
        lines.append(exp.ljust(width) + "".join(str(matrix[(exp, got)]).rjust(11)
                                                for got in VERDICTS))
    exploding = [o for o in outs if o.scenario.expected == "exploding"]
    latencies = [o.latency for o in exploding if o.latency is not None]
    lines.append("")
    lines.append("detection latency (steps from diagnosed onset to the monitor's first "
                 "critical alert):")
    for o in exploding:
        lines.append(f"  {o.scenario.name:40s} onset {o.report.first_bad_step!s:>4} "
                     f"detected {o.detected_at!s:>4} latency {o.latency!s:>4}")
    accuracy = sum(o.correct for o in outs) / len(outs)
    healthy_exploding = sum(o.verdict == "exploding" for o in outs if o.scenario.expected == "healthy")
    repairs = [o.repair_ok for o in outs if o.repaired is not None]
    lines.append(f"accuracy {accuracy:.1%} over {len(outs)} scenarios; healthy runs called "
                 f"exploding: {healthy_exploding}; repairs {sum(map(bool, repairs))}/{len(repairs)}")
    print("\n".join(lines))

    assert accuracy >= 0.95
    assert healthy_exploding == 0
    assert latencies and max(latencies) <= 5
    assert sum(map(bool, repairs)) / len(repairs) >= 0.9


# ------------------------------------------------------------------------------ messages
# The evidence numbers each kind of finding quotes in its message (formatted by report.fmt,
# the one number format of every message).
QUOTED: dict[str, tuple[str, ...]] = {
    "gradient_explosion": ("peak_grad_norm", "peak_to_healthy", "healthy_grad_norm",
                           "baseline_grad_norm", "onset_step", "peak_step", "detected_step"),
    "high_update_ratio": ("median_update_ratio", "layer"),
    "gradient_spike": ("max_ratio_to_baseline", "max_spike_step", "loss_jump", "first_loss",
                       "peak_loss", "peak_step", "recovered_step"),
    "non_finite": ("last_finite_grad_norm", "last_finite_step", "healthy_grad_norm",
                   "ratio_to_healthy"),
    "oscillation": ("median_step_ratio",),
    "loss_divergence": ("initial_loss", "peak_loss"),
    "vanishing_gradients": ("min_ratio_to_output",),
}
# what the online monitor's explosion alert quotes, per rule
QUOTED_ALERT: dict[str, tuple[str, ...]] = {
    "runaway": ("grad_norm", "ratio_to_healthy", "healthy_grad_norm", "loss", "loss_harm",
                "initial_loss", "best_loss"),
    "overflow_course": ("grad_norm",),
    "overshoot": ("loss_before", "loss", "growth_started_at"),
}


def _quotes(message: str, evidence: dict[str, object], keys: tuple[str, ...]) -> list[str]:
    """The keys whose evidence value is NOT quoted in the message (as fmt prints it)."""
    missing = []
    for k in keys:
        v = evidence.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and fmt(v) not in message:
            missing.append(f"{k}={fmt(v)}")
    return missing


def test_messages_quote_the_numbers_in_their_evidence() -> None:
    checked = 0
    for sc in SCENARIOS:
        out = outcome(sc)
        rep = out.report
        texts = [rep.summary] + [f.message for f in rep.findings] + [
            r.rationale for r in rep.recommendations]
        for text in texts:
            assert "None" not in text and " nan" not in text, f"{sc.name}: {text}"
        for f in rep.findings:
            missing = _quotes(f.message, f.evidence, QUOTED.get(f.kind, ()))
            assert missing == [], f"{sc.name} {f.kind}: {f.message} does not quote {missing}"
            checked += 1
        for a in out.result.alerts:
            rule = a.evidence.get("rule")
            if a.kind == "gradient_explosion" and isinstance(rule, str):
                missing = _quotes(a.message, a.evidence, QUOTED_ALERT[rule])
                assert missing == [], f"{sc.name} alert: {a.message} does not quote {missing}"
        upd = next((f for f in rep.findings if f.kind == "high_update_ratio"), None)
        if upd is not None:  # the layer named is the layer whose ratio is quoted
            layer = upd.evidence["layer"]
            assert upd.evidence[f"layer_{layer}"] == upd.evidence["median_update_ratio"]
        nf = next((f for f in rep.findings if f.kind == "non_finite"), None)
        if nf is not None:  # after an overflow the summary does not forecast one
            assert "would overflow" not in rep.summary, f"{sc.name}: {rep.summary}"
    assert checked >= 40


# ------------------------------------------------------------------------------ paths
def thinned_like_the_service(result: TrainingResult, k: int) -> SimpleNamespace:
    """The history the API's provisional diagnosis reads for a long run (app/services.py):
    every k-th step plus the last step, the first non-finite step and every alert step, with
    the monitor's alerts."""
    keep = {r.step for r in result.steps if r.step % k == 0}
    keep.add(result.steps[-1].step)
    if result.first_non_finite is not None:
        keep.add(result.first_non_finite.step)
    keep |= {a.step for a in result.alerts if a.step is not None}
    alerts = [json.loads(a.model_dump_json()) for a in result.alerts]
    return SimpleNamespace(spec=result.spec, steps=[r for r in result.steps if r.step in keep],
                           epochs=result.epochs, stop_reason=result.stop_reason,
                           first_non_finite=result.first_non_finite, alerts=alerts)


PATH_SCENARIOS = ["deep-relu-normal-init", "lr-step-up-at-80", "regression-target-x100-slow",
                  "adam-relu", "tanh-xavier", "outlier-spike-every-epoch", "catapult-wide-relu",
                  "deep-tanh-tiny-init", "dying-relu-negative-bias"]


@pytest.mark.parametrize("name", PATH_SCENARIOS)
def test_same_verdict_from_full_record_every_and_thinned_histories(name: str) -> None:
    sc = next(s for s in SCENARIOS if s.name == name)
    full = outcome(sc)
    thinned = diagnose(thinned_like_the_service(full.result, 4))
    every = Trainer(build_spec(sc, record_every=4)).run()
    assert every.stop_reason == full.result.stop_reason  # the monitor saw every step
    sparse = diagnose(every)
    assert (thinned.verdict, sparse.verdict) == (full.verdict, full.verdict), (
        f"full: {full.report.summary}\nthinned: {thinned.summary}\nrecord_every: "
        f"{sparse.summary}")
