"""Stability maps: where over two sweep axes training stays healthy and where it explodes.

From the members of a sweep (:mod:`core.sweep`) and their results this module computes, as
plain data (no plotting):

- each member's :class:`MemberOutcome`: the diagnosis verdict, first bad step, peak-to-baseline
  gradient growth, final loss, stop reason, and preflight's risk for its spec;
- a :class:`StabilityGrid` over two chosen axes (the other axes held at given values): the
  verdict and the preflight prediction per cell;
- per row of the grid (each value of the y axis) the largest healthy and the smallest
  exploding value of the x axis: the measured boundary;
- preflight calibration: how often preflight's risk (``high``/``critical`` = "will explode")
  agreed with the measured verdict, overall and per cell.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import core
from core.batched import train_specs
from core.sweep import AxisValue, SweepMember
from core.telemetry import Sink
from core.trainer import TrainingResult

__all__ = [
    "EXPLODING_RISKS",
    "VERDICTS",
    "MemberOutcome",
    "StabilityGrid",
    "calibration",
    "member_outcome",
    "predicted_risk",
    "stability_grid",
    "train_sweep",
]

VERDICTS = ("healthy", "unstable", "exploding", "vanishing", "stalled")
EXPLODING_RISKS = ("high", "critical")  # preflight risk levels read as "will explode"
BASELINE_STEPS = 5


@dataclass
class MemberOutcome:
    """What one member's run came to (JSON-ready; floats may be NaN/Inf)."""

    index: int
    values: dict[str, AxisValue]
    verdict: str
    first_bad_step: int | None
    peak_to_baseline: float | None
    final_loss: float | None
    stop_reason: str
    predicted_risk: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_to_baseline(result: TrainingResult) -> float | None:
    """Largest global gradient norm over the median of the first ``BASELINE_STEPS`` recorded
    norms (Inf once a norm was non-finite); None without records or a zero baseline."""
    norms = [r.grad_norm for r in result.steps]
    if not norms:
        return None
    if any(not math.isfinite(n) for n in norms):
        return math.inf
    base = statistics.median(norms[:BASELINE_STEPS])
    return max(norms) / base if base > 0 else None


def member_outcome(member: SweepMember, result: TrainingResult) -> MemberOutcome:
    """The member's verdict (``core.diagnose``) and growth figures."""
    report = core.diagnose(result)
    return MemberOutcome(
        index=member.index, values=dict(member.values), verdict=report.verdict,
        first_bad_step=report.first_bad_step, peak_to_baseline=peak_to_baseline(result),
        final_loss=result.final_loss, stop_reason=result.stop_reason)


EXPLOSION_FINDINGS = ("depth_amplification", "high_update_ratio")


def predicted_risk(member: SweepMember) -> str:
    """Preflight's risk of an *explosion* for the member's spec (analysis + one probe batch):
    ``critical`` from a critical explosion finding (gradient amplification through the depth
    past 1e3, a first update rewriting the weights), ``high`` from a first update too large
    for the weights (``high_update_ratio``), else ``medium`` or ``low`` as its overall risk
    says. A depth gain below 1e3 alone is a medium risk (calibrated on measured sweeps, see
    ``core.diagnostics.preflight``); vanishing, dead or saturated units are risks, not
    explosions."""
    report = core.preflight(member.spec)
    found = [f for f in report.risks if f.kind in EXPLOSION_FINDINGS]
    if any(f.severity == "critical" for f in found):
        return "critical"
    if any(f.kind == "high_update_ratio" for f in found):
        return "high"
    return "medium" if report.risk != "low" else "low"


def train_sweep(members: Sequence[SweepMember], sinks: Sequence[Sink | None] | None = None,
                *, with_preflight: bool = True, **options: Any) -> list[MemberOutcome]:
    """Train the members (batched, grouped by architecture) and return their outcomes, with
    preflight's risk per member when ``with_preflight``."""
    results = train_specs([m.spec for m in members], sinks, **options)
    outcomes = [member_outcome(m, r) for m, r in zip(members, results, strict=True)]
    if with_preflight:
        for m, o in zip(members, outcomes, strict=True):
            o.predicted_risk = predicted_risk(m)
    return outcomes


@dataclass
class StabilityGrid:
    """Verdicts over axes ``x`` (columns) and ``y`` (rows), other axes held at ``fixed``.

    ``verdict[j][i]`` / ``risk[j][i]`` / ``member[j][i]`` belong to ``y_values[j]``,
    ``x_values[i]`` (None where no member has those values).
    """

    x: str
    y: str
    x_values: list[AxisValue]
    y_values: list[AxisValue]
    fixed: dict[str, AxisValue]
    verdict: list[list[str | None]]
    risk: list[list[str | None]]
    member: list[list[int | None]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def predicted_exploding(self) -> list[list[bool | None]]:
        """Per cell: preflight says it will explode (None: no prediction)."""
        return [[None if r is None else r in EXPLODING_RISKS for r in row] for row in self.risk]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "calibration": calibration_of_cells(self.verdict, self.risk)}


def stability_grid(outcomes: Sequence[MemberOutcome], x: str, y: str,
                   fixed: dict[str, AxisValue] | None = None) -> StabilityGrid:
    """The grid over ``x`` and ``y`` of the members whose other axis values equal ``fixed``
    (default: the first value of each other axis), with the measured boundary per row."""
    if not outcomes:
        raise ValueError("no members")
    paths = list(outcomes[0].values)
    for p in (x, y):
        if p not in paths:
            raise ValueError(f"{p!r} is not an axis of this sweep; axes: {paths}")
    if x == y:
        raise ValueError("x and y must be different axes")
    others = [p for p in paths if p not in (x, y)]
    fixed = dict(fixed or {})
    for p in others:
        if p not in fixed:
            fixed[p] = outcomes[0].values[p]
    chosen = [o for o in outcomes if all(o.values[p] == fixed[p] for p in others)]
    x_values = _ordered(o.values[x] for o in outcomes)
    y_values = _ordered(o.values[y] for o in outcomes)
    verdict: list[list[str | None]] = [[None] * len(x_values) for _ in y_values]
    risk: list[list[str | None]] = [[None] * len(x_values) for _ in y_values]
    member: list[list[int | None]] = [[None] * len(x_values) for _ in y_values]
    for o in chosen:
        i, j = x_values.index(o.values[x]), y_values.index(o.values[y])
        verdict[j][i], risk[j][i], member[j][i] = o.verdict, o.predicted_risk, o.index
    grid = StabilityGrid(x, y, x_values, y_values, fixed, verdict, risk, member)
    grid.rows = [_row_boundary(y_values[j], x_values, verdict[j], risk[j])
                 for j in range(len(y_values))]
    return grid


def _ordered(values: Any) -> list[AxisValue]:
    seen: list[AxisValue] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _row_boundary(y_value: AxisValue, x_values: list[AxisValue], verdicts: list[str | None],
                  risks: list[str | None]) -> dict[str, Any]:
    """Largest healthy and smallest exploding x of one row (measured and predicted)."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in x_values)
    order = sorted(range(len(x_values)), key=lambda i: x_values[i]) if numeric else list(
        range(len(x_values)))  # type: ignore[arg-type, return-value]
    healthy = [x_values[i] for i in order if verdicts[i] == "healthy"]
    exploding = [x_values[i] for i in order if verdicts[i] == "exploding"]
    predicted = [x_values[i] for i in order
                 if risks[i] is not None and risks[i] in EXPLODING_RISKS]
    return {"y": y_value,
            "largest_healthy": healthy[-1] if healthy else None,
            "smallest_exploding": exploding[0] if exploding else None,
            "smallest_predicted_exploding": predicted[0] if predicted else None}


def calibration_of_cells(verdicts: list[list[str | None]],
                         risks: list[list[str | None]]) -> dict[str, Any]:
    """Agreement of "preflight risk high/critical" with "measured verdict exploding"."""
    pairs = [(v, r) for vrow, rrow in zip(verdicts, risks, strict=True)
             for v, r in zip(vrow, rrow, strict=True) if v is not None and r is not None]
    return calibration(pairs)


def calibration(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """From ``(verdict, risk)`` pairs: counts of the four cases and the agreement rate."""
    counts = {"true_exploding": 0, "false_alarm": 0, "missed": 0, "true_safe": 0}
    for verdict, risk in pairs:
        pred, meas = risk in EXPLODING_RISKS, verdict == "exploding"
        key = ("true_exploding" if meas else "false_alarm") if pred else (
            "missed" if meas else "true_safe")
        counts[key] += 1
    n = len(pairs)
    agree = counts["true_exploding"] + counts["true_safe"]
    return {"cells": n, **counts, "agreement": agree / n if n else None}
