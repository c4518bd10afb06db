"""Offline detectors: pure functions over a run's recorded history.

Each detector reads a :class:`Context` (the records as columns, the online monitor replayed
over them, the data's reference levels) and returns findings; :func:`analyze_explosion`
returns the explosion's timeline as well. Thresholds are stated where they are defined, with
the reason for each; none is specific to a scenario.

The :class:`Context` and the thresholds live in :mod:`core.diagnostics.context`, the
non-finite and explosion analyses in :mod:`core.diagnostics.explosion`, the loss levels in
:mod:`core.diagnostics.levels`; this module holds the other detectors and re-exports them all.
"""

from __future__ import annotations

import math

import numpy as np

from core.diagnostics.context import (
    CHANCE_MARGIN,
    DATA_SCALE_HIGH,
    DATA_SCALE_LOW,
    FLAT_IMPROVEMENT,
    FORWARD_GAIN,
    LOSS_DIVERGENCE,
    LOST_FACTOR,
    LOST_TAIL,
    LOST_WINDOW,
    UNITS_CRITICAL,
    UNITS_WARN,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_REWRITE,
    VANISHING_RATIO,
    Context,
    log_of,
    segment,
)
from core.diagnostics.explosion import ExplosionAnalysis, analyze_explosion, detect_non_finite
from core.diagnostics.levels import initial_loss, loss_levels, lost_progress
from core.diagnostics.medians import column_medians, median, sliding_medians
from core.diagnostics.replay import Replay, replay_monitor
from core.diagnostics.report import Finding, fmt

__all__ = [
    "CHANCE_MARGIN",
    "DATA_SCALE_HIGH",
    "DATA_SCALE_LOW",
    "FLAT_IMPROVEMENT",
    "FORWARD_GAIN",
    "LOSS_DIVERGENCE",
    "LOST_FACTOR",
    "LOST_TAIL",
    "LOST_WINDOW",
    "UNITS_CRITICAL",
    "UNITS_WARN",
    "UPDATE_RATIO_HIGH",
    "UPDATE_RATIO_REWRITE",
    "VANISHING_RATIO",
    "Context",
    "ExplosionAnalysis",
    "Replay",
    "analyze_explosion",
    "detect_data_scale",
    "detect_dead_units",
    "detect_depth_amplification",
    "detect_flat_loss",
    "detect_loss_divergence",
    "detect_non_finite",
    "detect_saturation",
    "detect_update_ratio",
    "detect_vanishing",
    "log_of",
    "loss_levels",
    "lost_progress",
    "replay_monitor",
    "segment",
]

_fmt = fmt


# ------------------------------------------------------------------------------ others
def detect_depth_amplification(ctx: Context) -> Finding | None:
    """Forward amplification through the depth at the first record (a bad initialisation)."""
    s = ctx.s
    if len(s) == 0 or s.n_layers < 3:
        return None
    # RMS (not std): a saturated layer has a tiny spread around a large mean
    act = np.sqrt(np.square(s.layer["act_std"][0]) + np.square(s.layer["act_mean"][0]))
    if not np.isfinite(act).all() or (act <= 0).any():
        return None
    x_std = ctx.scale.x_std if ctx.scale is not None else math.nan
    gains = act[1:] / act[:-1]
    gm = float(np.exp(np.mean(np.log(gains))))
    g = s.layer["grad_norm"][0]
    grad_ratio = float(g[0] / g[-1]) if g[-1] > 0 else math.inf
    if gm < FORWARD_GAIN:
        return None
    total = float(act[-1] / act[0])
    return Finding(
        kind="depth_amplification", severity="warning", step=int(s.step[0]),
        layers=list(range(s.n_layers)),
        evidence={"forward_gain_per_layer": gm, "output_to_first_layer_rms": total,
                  "first_layer_rms": float(act[0]), "output_rms": float(act[-1]),
                  "input_rms": x_std, "first_to_last_grad_ratio": grad_ratio},
        message=(f"At step {int(s.step[0])} activations grow x{gm:.3g} per layer through the "
                 f"depth (first layer RMS {_fmt(float(act[0]))}, outputs {_fmt(float(act[-1]))}): "
                 "the initial weights are too large for their fan-in, so the signal and its "
                 "gradient are amplified layer after layer."),
    )


def detect_update_ratio(ctx: Context, until_index: int | None) -> Finding | None:
    """Median ||update|| / ||weight|| per layer over the healthy part of the run."""
    s = ctx.s
    stop = until_index if until_index is not None else len(s)
    if stop <= 0:
        stop = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        r = s.layer["update_norm"][:stop] / s.layer["weight_norm"][:stop]
    med = column_medians(r)
    if not np.isfinite(med).any():
        return None
    worst = int(np.nanargmax(med))
    top = float(med[worst])
    if top < UPDATE_RATIO_HIGH:
        return None
    layers = [int(k) for k in np.flatnonzero(med >= UPDATE_RATIO_HIGH)]
    ev: dict[str, float | int | str | None] = {"median_update_ratio": top,
                                               "layer": worst,
                                               "healthy_update_ratio": 1e-3,
                                               "lr": float(s.lr[0])}
    for k in range(s.n_layers):
        ev[f"layer_{k}"] = float(med[k])
    return Finding(
        kind="high_update_ratio",
        severity="critical" if top >= UPDATE_RATIO_REWRITE else "warning",
        step=int(s.step[0]), layers=layers, evidence=ev,
        message=(f"Layer {worst}'s update-to-weight ratio ||update|| / ||weight|| is "
                 f"{_fmt(top)} (median over the healthy steps); around 1e-3 is healthy. The "
                 f"learning rate {_fmt(float(s.lr[0]))} is too high for these weights."),
    )


def detect_vanishing(ctx: Context) -> Finding | None:
    """Layers whose relative gradient ||dW||/||W|| is >= 1000x below the output layer's."""
    s = ctx.s
    if s.n_layers < 2 or len(s) == 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = s.layer["weight_grad_norm"] / s.layer["weight_norm"]
    med = column_medians(rel)
    out = med[-1]
    if not (out > 0):
        return None
    ratios = med[:-1] / out
    bad = [int(k) for k in np.flatnonzero(ratios <= VANISHING_RATIO)]
    if not bad:
        return None
    worst = int(np.nanargmin(ratios))
    # first step from which the worst layer's ratio stays (median of the next 10) below it
    per = rel[:, worst] / rel[:, -1]
    below = np.flatnonzero(sliding_medians(per, 10) <= VANISHING_RATIO)
    start = int(s.step[below[0]]) if below.size else int(s.step[0])
    ev: dict[str, float | int | str | None] = {"min_ratio_to_output": float(ratios[worst]),
                                               "output_relative_grad": float(out)}
    for k in range(s.n_layers):
        ev[f"layer_{k}_relative_grad"] = float(med[k])
    return Finding(
        kind="vanishing_gradients", severity="warning", step=start, layers=bad,
        evidence=ev,
        message=(f"Layer {worst}'s gradient relative to its weights is {_fmt(float(ratios[worst]))}x "
                 f"the output layer's (median over the run): layers {bad} barely learn."),
    )


def _units(ctx: Context, name: str) -> tuple[np.ndarray, int | None]:
    s = ctx.s
    vals = s.layer[name]
    have = s.present[name]
    if not have.any():
        return np.array([]), None
    seg = segment(s, 0.25, tail=True)
    med = column_medians(np.where(have[seg], vals[seg], np.nan))
    return med, None


def _first_step_above(ctx: Context, name: str, layer: int, level: float) -> int:
    s = ctx.s
    col = s.layer[name][:, layer]
    hit = np.flatnonzero(col >= level)
    return int(s.step[hit[0]]) if hit.size else int(s.step[0])


def detect_dead_units(ctx: Context) -> Finding | None:
    """ReLU-family layers whose units output nothing for a whole batch, late in the run."""
    med, _ = _units(ctx, "dead_fraction")
    if med.size == 0 or not np.isfinite(med).any() or np.nanmax(med) < UNITS_WARN:
        return None
    layers = [int(k) for k in np.flatnonzero(med >= UNITS_WARN)]
    worst = int(np.nanargmax(med))
    level = UNITS_CRITICAL if med[worst] >= UNITS_CRITICAL else UNITS_WARN
    step = _first_step_above(ctx, "dead_fraction", worst, level)
    ev: dict[str, float | int | str | None] = {"max_dead_fraction": float(med[worst])}
    for k in layers:
        ev[f"layer_{k}"] = float(med[k])
    return Finding(
        kind="dead_units", severity="critical" if med[worst] >= UNITS_CRITICAL else "warning",
        step=step, layers=layers, evidence=ev,
        message=(f"{med[worst]:.0%} of layer {worst}'s units are dead (zero output for every "
                 f"example of a batch) since step {step}: no gradient flows through them."),
    )


def detect_saturation(ctx: Context) -> Finding | None:
    """tanh/sigmoid layers whose outputs sit in the flat tails (derivative ~ 0)."""
    med, _ = _units(ctx, "saturated_fraction")
    if med.size == 0 or not np.isfinite(med).any() or np.nanmax(med) < UNITS_WARN:
        return None
    layers = [int(k) for k in np.flatnonzero(med >= UNITS_WARN)]
    worst = int(np.nanargmax(med))
    step = _first_step_above(ctx, "saturated_fraction", worst, UNITS_WARN)
    ev: dict[str, float | int | str | None] = {"max_saturated_fraction": float(med[worst])}
    for k in layers:
        ev[f"layer_{k}"] = float(med[k])
    return Finding(
        kind="saturated_units",
        severity="critical" if med[worst] >= UNITS_CRITICAL else "warning",
        step=step, layers=layers, evidence=ev,
        message=(f"{med[worst]:.0%} of layer {worst}'s outputs sit in the flat tails of the "
                 "activation, where its derivative is ~0: gradients through them vanish, "
                 "however large the weights are."),
    )


def detect_flat_loss(ctx: Context) -> Finding | None:
    """The loss did not improve, or ended at the chance level (a constant prediction)."""
    s = ctx.s
    if len(s) < 5 or int(s.step[-1] - s.step[0]) < 20:
        return None
    # the loss at the start (the first 1% of the steps) against the last 10% of the records:
    # on a long run the first 5% of the records may already be converged
    first = initial_loss(s)  # loss_levels' initial level (its windows are not needed)
    last = median(s.loss[segment(s, 0.1, tail=True)])
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
        return None
    if not last < LOSS_DIVERGENCE * first:  # it diverged: detect_loss_divergence says so
        return None
    improvement = 1.0 - last / first
    chance = ctx.chance
    at_chance = chance is not None and chance > 0 and last >= CHANCE_MARGIN * chance
    if improvement >= FLAT_IMPROVEMENT and not at_chance:
        return None
    why = (f"ended at {_fmt(last)}, no better than the chance level {_fmt(chance)} (what a "
           "constant prediction scores)" if at_chance else
           f"improved only {improvement:.1%} ({_fmt(first)} -> {_fmt(last)})")
    return Finding(
        kind="flat_loss", severity="warning", step=int(s.step[0]), layers=[],
        evidence={"initial_loss": first, "final_loss": last, "improvement": improvement,
                  "chance_loss": chance, "at_chance": int(at_chance)},
        message=f"The loss {why}: the network is not learning.",
    )


def detect_loss_divergence(ctx: Context) -> Finding | None:
    """The loss rose two orders of magnitude over its initial level and stayed there."""
    s = ctx.s
    if len(s) < 2:
        return None
    first = median(s.loss[s.step < s.step[0] + 3])  # the first steps (records may be thinned)
    ll = s.loss
    bad = ~(ll < LOSS_DIVERGENCE * first)  # non-finite counts
    if not bad.any() or not (first > 0):
        return None
    i = int(np.flatnonzero(bad)[0])
    last = median(s.loss[segment(s, 0.1, tail=True)])
    persisting = not (last < LOSS_DIVERGENCE * first)
    peak = float(np.nanmax(np.where(np.isfinite(ll), ll, np.nan))) if np.isfinite(ll).any() else math.nan
    return Finding(
        kind="loss_divergence", severity="critical" if persisting else "warning",
        step=int(s.step[i]), layers=[],
        evidence={"initial_loss": first, "peak_loss": peak, "final_loss": last,
                  "ratio": peak / first if first > 0 else math.nan},
        message=(f"The loss rose over {LOSS_DIVERGENCE:g}x its initial {_fmt(first)} at step "
                 f"{int(s.step[i])} (peak {_fmt(peak)})" + (
                     " and never came back." if persisting else ", then came back.")),
    )


def detect_data_scale(ctx: Context) -> Finding | None:
    """Unstandardised inputs or regression targets far from unit scale."""
    sc = ctx.scale
    if sc is None or sc.standardized:
        return None
    parts: list[str] = []
    if sc.x_std >= DATA_SCALE_HIGH or 0 < sc.x_std <= DATA_SCALE_LOW:
        parts.append(f"inputs have RMS {_fmt(sc.x_std)}")
    if sc.y_std is not None and sc.y_std >= DATA_SCALE_HIGH:
        parts.append(f"regression targets have RMS {_fmt(sc.y_std)}")
    if not parts:
        return None
    return Finding(
        kind="data_scale", severity="info", step=None, layers=[0] if "inputs" in parts[0] else [],
        evidence={"input_rms": sc.x_std, "target_rms": sc.y_std},
        message=("The data are not standardised: " + " and ".join(parts) + ". Gradients scale "
                 "with the inputs (first layer) and with the targets (every layer, through the "
                 "error), so a learning rate tuned for unit-scale data overshoots."),
    )
