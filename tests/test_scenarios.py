"""The labelled scenario suite (tests/scenarios.py): verdicts, onsets and repairs.

Each scenario is trained, diagnosed and, where labelled, repaired with its top recommendation.
``test_suite_meets_the_targets`` prints the confusion matrix and the detection latencies
(run with ``-s`` to see them) and checks the issue's targets on the whole suite.
"""

from __future__ import annotations

from collections import Counter

import pytest
from scenarios import SCENARIOS, Outcome, Scenario, run_scenario

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
