"""Sweep outcomes: what each member of a sweep came to, and preflight's forecast for it.

:func:`train_sweep` trains a sweep's members (batched, :func:`core.batched.train_specs`) and
returns one :class:`MemberOutcome` per member: its diagnosis verdict and first bad step
(:func:`member_outcome`), its gradient growth (:func:`peak_to_baseline`), final loss, stop
reason and, when asked, preflight's risk of an explosion for its spec (:func:`predicted_risk`).
:mod:`core.stability` builds its grids and recommendation from these outcomes and re-exports
them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import core
from core.batched import train_specs
from core.sweep import AxisValue, SweepMember
from core.telemetry import Sink
from core.training_result import TrainingResult

__all__ = ["MemberOutcome", "member_outcome", "peak_to_baseline", "predicted_risk", "train_sweep"]


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
    job_id: str | None = None  # the member's job, when it ran as one (the service)

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
