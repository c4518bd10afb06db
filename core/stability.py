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
  agreed with the measured verdict, overall and per cell;
- a :class:`Recommendation` (:func:`recommend`): the setting to launch the real run with.
  Rule (:data:`RECOMMENDATION_RULE`): among the healthy members, the lowest final loss of
  those that touch no exploding or unstable member (one step along either axis); only when
  every healthy member touches one is such a member chosen, with ``margin="none"``.

The members' outcomes (training a sweep, verdicts, growth, preflight's risk) are
:mod:`core.sweep_outcomes`, re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core.sweep import AxisValue
from core.sweep_outcomes import (
    MemberOutcome,
    member_outcome,
    peak_to_baseline,
    predicted_risk,
    train_sweep,
)

__all__ = [
    "EXPLODING_RISKS",
    "RECOMMENDATION_RULE",
    "VERDICTS",
    "MemberOutcome",
    "Recommendation",
    "StabilityGrid",
    "calibration",
    "member_outcome",
    "no_recommendation_reason",
    "peak_to_baseline",
    "predicted_risk",
    "recommend",
    "stability_grid",
    "train_sweep",
]

VERDICTS = ("healthy", "unstable", "exploding", "vanishing", "stalled")
EXPLODING_RISKS = ("high", "critical")  # preflight risk levels read as "will explode"


@dataclass
class StabilityGrid:
    """Verdicts over axes ``x`` (columns) and ``y`` (rows), other axes held at ``fixed``.

    ``verdict[j][i]`` / ``risk[j][i]`` / ``member[j][i]`` belong to ``y_values[j]``,
    ``x_values[i]`` (None where no member has those values). ``recommended``: the member of
    this slice to launch the real run like (:func:`recommend`), None when no member is
    healthy; ``recommended_reason``: its one-sentence reason, or why there is none.
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
    recommended: Recommendation | None = None
    recommended_reason: str = ""  # the recommendation's reason, or why there is none

    def predicted_exploding(self) -> list[list[bool | None]]:
        """Per cell: preflight says it will explode (None: no prediction)."""
        return [[None if r is None else r in EXPLODING_RISKS for r in row] for row in self.risk]

    def recommended_cell(self) -> tuple[int, int] | None:
        """``(i, j)``: the recommended member's column and row (None: no recommendation)."""
        if self.recommended is None:
            return None
        for j, row in enumerate(self.member):
            for i, index in enumerate(row):
                if index == self.recommended.index:
                    return i, j
        return None

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
    grid.recommended = recommend(chosen, x, y)
    grid.recommended_reason = (grid.recommended.reason if grid.recommended is not None
                               else no_recommendation_reason(chosen))
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


# --- the recommendation -------------------------------------------------------------------

RECOMMENDATION_RULE = (
    "Among the healthy runs, the one with the lowest final loss that touches no exploding or "
    "unstable run (none one step away along either axis); only when every healthy run "
    "touches one is such a run chosen, flagged margin \"none\".")
BOUNDARY_VERDICTS = ("exploding", "unstable")  # the verdicts a recommendation keeps clear of

_AXIS_NAMES = {"optimizer.lr": "lr", "model.init.std": "init std", "model.depth": "depth",
               "clipping.max_norm": "max norm", "clipping.clip_value": "clip value",
               "model.init.scheme": "init scheme", "optimizer.momentum": "momentum"}
_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")


@dataclass
class Recommendation:
    """The member to launch the real run like (JSON-ready via ``asdict``).

    ``margin``: steps along ``x`` from this member to the nearest exploding or unstable member
    of its row (at least 2); ``"none"`` when it touches one (one step along ``x`` or ``y``:
    chosen only because every healthy member does); None when nothing in its row exploded or
    turned unstable (the sweep did not reach the boundary along ``x`` there). ``boundary``: that
    nearest member along ``x`` (``{"x", "verdict", "steps"}``) or None.
    """

    index: int
    values: dict[str, AxisValue]
    job_id: str | None
    final_loss: float | None
    margin: int | str | None
    boundary: dict[str, Any] | None
    reason: str


def _numeric(values: Sequence[AxisValue]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _sorted_if_numeric(values: list[AxisValue]) -> list[AxisValue] | None:
    """An ordered (numeric) axis's values in order; None for an unordered axis (a scheme, a
    flag), along which "one step away" means nothing."""
    return sorted(values) if _numeric(values) else None


def _name(path: str) -> str:
    return _AXIS_NAMES.get(path, path)


def _fmt(v: AxisValue | float | None) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _loss_key(o: MemberOutcome) -> float:
    return o.final_loss if o.final_loss is not None and math.isfinite(o.final_loss) else math.inf


def recommend(outcomes: Sequence[MemberOutcome], x: str, y: str) -> Recommendation | None:
    """The member to launch the real run with, from the outcomes of one grid over ``x`` and
    ``y`` (members differing in another axis are never neighbours); None when no member is
    healthy (:func:`no_recommendation_reason` says why).

    Rule (:data:`RECOMMENDATION_RULE`): near the edge of stability runs learn fastest but are
    fragile (a longer run, other data or another seed tip them over), so a healthy member
    whose neighbour one step along ``x`` or ``y`` (ordered, numeric axes only) exploded or
    turned unstable is chosen only when every healthy member has such a neighbour. Among the
    rest, the lowest final loss wins (a non-finite or missing loss ranks last); ties go to the
    larger margin along ``x``, then to the first member in sweep order.
    """
    xs = _sorted_if_numeric(_ordered(o.values[x] for o in outcomes))
    ys = _sorted_if_numeric(_ordered(o.values[y] for o in outcomes))

    def rest(o: MemberOutcome) -> tuple[tuple[str, AxisValue], ...]:
        return tuple(sorted((p, v) for p, v in o.values.items() if p not in (x, y)))

    cells: dict[tuple[Any, AxisValue, AxisValue], MemberOutcome] = {}
    for o in outcomes:
        cells.setdefault((rest(o), o.values[x], o.values[y]), o)

    def bad(r: Any, xv: AxisValue, yv: AxisValue) -> MemberOutcome | None:
        o = cells.get((r, xv, yv))
        return o if o is not None and o.verdict in BOUNDARY_VERDICTS else None

    ranked = []
    for o in outcomes:
        if o.verdict != "healthy":
            continue
        r, xv, yv = rest(o), o.values[x], o.values[y]
        nearest: dict[str, Any] | None = None
        touches: list[tuple[str, AxisValue, MemberOutcome]] = []
        if xs is not None:
            i = xs.index(xv)
            # nearest exploding/unstable along x; at equal steps the larger x (the usual side)
            for k in sorted(range(len(xs)), key=lambda k: (abs(k - i), -k)):
                if k != i and (n := bad(r, xs[k], yv)) is not None:
                    nearest = {"x": xs[k], "verdict": n.verdict, "steps": abs(k - i)}
                    break
            touches += [(x, xs[k], n) for k in (i + 1, i - 1)
                        if 0 <= k < len(xs) and (n := bad(r, xs[k], yv)) is not None]
        if ys is not None:
            j = ys.index(yv)
            touches += [(y, ys[k], n) for k in (j + 1, j - 1)
                        if 0 <= k < len(ys) and (n := bad(r, xv, ys[k])) is not None]
        steps = nearest["steps"] if nearest is not None else math.inf
        ranked.append(((bool(touches), _loss_key(o), -steps, o.index), o, nearest, touches))
    if not ranked:
        return None
    _, best, boundary, touches = min(ranked, key=lambda t: t[0])
    margin: int | str | None = "none" if touches else (
        boundary["steps"] if boundary is not None else None)
    return Recommendation(
        index=best.index, values=dict(best.values), job_id=best.job_id,
        final_loss=best.final_loss, margin=margin, boundary=boundary,
        reason=_reason(best, x, y, boundary, touches, xs is not None))


def _reason(o: MemberOutcome, x: str, y: str, boundary: dict[str, Any] | None,
            touches: list[tuple[str, AxisValue, MemberOutcome]], ordered_x: bool) -> str:
    """One sentence: the setting, why it, and how far it is from the boundary."""
    head = (f"{_name(x)} {_fmt(o.values[x])} with {_name(y)} {_fmt(o.values[y])}: lowest "
            f"final loss ({_fmt(o.final_loss)}) among healthy runs")
    if touches:
        path, value, n = touches[0]
        return (f"{head}, but every healthy run borders an exploding or unstable one (this one: "
                f"{n.verdict} at {_name(path)} {_fmt(value)}): no safety margin")
    head += " clear of the boundary"
    if not ordered_x:
        return f"{head} ({_name(x)} has no order, so no margin is measured along it)"
    if boundary is None:
        return (f"{head}; no run at {_name(y)} {_fmt(o.values[y])} exploded or turned unstable "
                f"at any {_name(x)} swept (the boundary along {_name(x)} was not reached)")
    steps = boundary["steps"]
    words = _COUNT_WORDS[steps] if steps < len(_COUNT_WORDS) else str(steps)
    above = boundary["x"] > o.values[x]
    return (f"{head}, {words} steps {'below' if above else 'above'} the "
            f"{'smallest' if above else 'largest'} {boundary['verdict']} {_name(x)} "
            f"{_fmt(boundary['x'])}")


def no_recommendation_reason(outcomes: Sequence[MemberOutcome]) -> str:
    """Why :func:`recommend` found nothing (or the empty string when it would)."""
    if not outcomes:
        return "no member of this slice has finished"
    counts = dict.fromkeys(VERDICTS, 0)
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    if counts["healthy"]:
        return ""
    n = len(outcomes)
    if counts["exploding"] == n:
        return "every member exploded"
    if counts["stalled"] + counts["vanishing"] == n:
        return "none learned: every member stalled or vanished"
    parts = ", ".join(f"{c} {v}" for v, c in counts.items() if c)
    return f"no member is healthy ({parts})"
