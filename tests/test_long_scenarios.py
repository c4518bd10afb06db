"""The long-run scenario suite (tests/long_scenarios.py): 5k-50k-step runs, objective labels.

Each run is trained once (the whole trajectory), labelled by ``long_scenarios.label`` from its
loss and non-finite values, and diagnosed as the default run (``stop_on_explosion`` on) would
be. ``test_long_suite_meets_the_targets`` prints the table (run with ``-s``).
"""

from __future__ import annotations

import json
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
from long_scenarios import (
    ACCEPTED,
    LONG_SCENARIOS,
    LongOutcome,
    LongScenario,
    build_long_spec,
    label,
    run_long,
)

from core.diagnostics import diagnose
from core.trainer import Trainer

pytestmark = pytest.mark.slow  # ~2 minutes on an idle 2-core machine

_CACHE: dict[str, LongOutcome] = {}


def outcome(sc: LongScenario) -> LongOutcome:
    if sc.name not in _CACHE:
        _CACHE[sc.name] = run_long(sc)
    return _CACHE[sc.name]


def test_label_rule_reads_only_the_loss_and_non_finite_values() -> None:
    steps = np.arange(5000)
    converged = 0.7 * np.exp(-steps / 300.0) + 1e-6
    assert label(converged, np.ones(5000)) == "healthy"
    wobble = converged * np.where(steps % 7 == 0, 50.0, 1.0)  # single-batch blips at 1e-6
    assert label(wobble, np.ones(5000)) == "healthy"
    blown = converged.copy()
    blown[4000:] = 5.0  # lost everything, never came back
    assert label(blown, np.ones(5000)) == "exploding"
    nan = converged.copy()
    nan[4500] = np.nan
    assert label(nan, np.ones(5000)) == "exploding"
    assert label(converged, np.where(steps == 4999, np.inf, 1.0)) == "exploding"
    setback = converged.copy()
    setback[3000:3200] = 0.3  # an order-of-magnitude setback that recovered
    assert label(setback, np.ones(5000)) == "transient"


def test_long_suite_covers_what_the_issue_asks() -> None:
    specs = [sc.spec for sc in LONG_SCENARIOS]
    assert len(LONG_SCENARIOS) >= 30
    assert len({sc.name for sc in LONG_SCENARIOS}) == len(LONG_SCENARIOS)
    assert all(5_000 <= s["training"]["max_steps"] <= 50_000 for s in specs)
    assert {s["dtype"] for s in specs} == {"float32", "float64"}
    assert {s["optimizer"]["name"] for s in specs} >= {"adam", "adamw", "rmsprop", "sgd"}
    assert any(h.get("batch_norm") for s in specs for h in s["model"]["hidden"])


@pytest.mark.parametrize("sc", LONG_SCENARIOS, ids=[sc.name for sc in LONG_SCENARIOS])
def test_long_run_is_diagnosed_as_labelled(sc: LongScenario) -> None:
    out = outcome(sc)
    rep = out.report
    assert rep.verdict in ACCEPTED[out.label], f"{sc.name} ({out.label}): {rep.summary}"
    if out.label != "exploding":
        assert out.stopped_at is None, f"{sc.name}: the monitor would stop a {out.label} run"
        assert not any(f.kind == "gradient_explosion" and f.severity == "critical"
                       for f in rep.findings)
    else:
        assert rep.recommendations, f"{sc.name}: an exploding run must come with a fix"


def test_long_suite_meets_the_targets() -> None:
    outs = [outcome(sc) for sc in LONG_SCENARIOS]
    exploding = [o for o in outs if o.label == "exploding"]
    late = [o for o in exploding if o.onset is not None and o.onset >= 1000]
    not_exploding = [o for o in outs if o.label != "exploding"]
    lat = [o.latency for o in exploding if o.latency is not None]
    lines = ["", f"{'scenario':36s} {'label':9s} {'verdict':9s} stop  onset latency"]
    for o in outs:
        lines.append(f"{o.scenario.name:36s} {o.label:9s} {o.verdict:9s} "
                     f"{o.stopped_at!s:>5} {o.onset!s:>5} {o.latency!s:>5}")
    accuracy = sum(o.correct for o in outs) / len(outs)
    lines.append(f"accuracy {accuracy:.1%}; latencies {sorted(lat)}")
    print("\n".join(lines))

    assert len(late) >= 5, "the suite must hold genuinely late explosions"
    assert [o.scenario.name for o in not_exploding if o.verdict == "exploding"] == []
    assert [o.scenario.name for o in not_exploding if o.stopped_at is not None] == []
    assert accuracy >= 0.97 - 1e-9
    # every genuine explosion is diagnosed; most are stopped online (a run that loses what it
    # learned without a large gradient is judged at the end, not stopped: see core.Monitor)
    assert all(o.verdict == "exploding" for o in exploding)
    assert len(lat) >= 0.5 * len(exploding)
    assert statistics.median(lat) <= 30


@pytest.mark.parametrize("name", ["adam-relu-moons-s0", "outlier-every-epoch-20",
                                  "lr-step-up-float64"])
def test_long_run_gets_the_same_verdict_from_thinned_and_record_every_histories(
        name: str) -> None:
    """The API's provisional diagnosis reads a thinned history (every k-th step plus the last,
    first non-finite and alert steps, with the monitor's alerts); record_every > 1 stores one
    step in k. Both must give the verdict of the full record."""
    sc = next(s for s in LONG_SCENARIOS if s.name == name)
    full = outcome(sc)
    history = full.history
    keep = {r.step for r in history.steps if r.step % 10 == 0} | {history.steps[-1].step}
    if history.first_non_finite is not None:
        keep.add(history.first_non_finite.step)
    keep |= {a.step for a in history.alerts if a.step is not None}
    thinned = SimpleNamespace(
        spec=history.spec, steps=[r for r in history.steps if r.step in keep],
        epochs=history.epochs, stop_reason=history.stop_reason,
        first_non_finite=history.first_non_finite,
        alerts=[json.loads(a.model_dump_json()) for a in history.alerts])
    spec = build_long_spec(sc).model_copy(deep=True)
    spec.monitor.record_every = 10
    spec.monitor.stop_on_explosion = True
    every = Trainer(spec).run()
    assert diagnose(thinned).verdict == full.verdict
    assert diagnose(every).verdict == full.verdict
    assert (every.stop_reason == "explosion") == (full.stopped_at is not None)
