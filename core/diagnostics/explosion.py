"""The first non-finite value and the explosion's timeline, read off a run's history.

:func:`detect_non_finite` places the first NaN/Inf (step, layer, tensor) and
:func:`analyze_explosion` dates the explosion the replayed monitor confirmed, the run went
non-finite in, or the run lost its progress for good in: its onset, peak, growth rate, the
layers in the order they left their range, and whether the run recovered. Re-exported by
:mod:`core.diagnostics.detectors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.diagnostics.context import CHANCE_MARGIN, UPDATE_RATIO_REWRITE, Context, log_of, segment
from core.diagnostics.levels import lost_progress
from core.diagnostics.medians import median
from core.diagnostics.report import Finding, fmt

__all__ = [
    "ExplosionAnalysis",
    "analyze_explosion",
    "detect_non_finite",
]

_fmt = fmt


# ------------------------------------------------------------------------------ non-finite
def detect_non_finite(ctx: Context) -> Finding | None:
    """The first NaN/Inf: step, layer, tensor (activation/loss/gradient/weight/update)."""
    ev = ctx.first_non_finite
    alert = next((a for a in ctx.replay.alerts if a.kind == "non_finite"), None)
    if ev is None and alert is None:
        return None
    s = ctx.s
    tensor: str
    value: str
    if ev is not None:
        step, layer, tensor, value = ev.step, ev.layer, ev.tensor, ev.value
        layers = [] if layer is None else [layer]
    else:
        assert alert is not None
        step = alert.step if alert.step is not None else 0
        layer_v = alert.evidence.get("layer")
        layer = layer_v if isinstance(layer_v, int) else None
        tensor = str(alert.evidence.get("tensor"))
        value = str(alert.evidence.get("value"))
        layers = alert.layers
    ok = s.finite_mask() & (s.step < step)
    last_finite = float(s.grad_norm[ok][-1]) if ok.any() else math.nan
    last_step = int(s.step[ok][-1]) if ok.any() else None
    h = ctx.replay.healthy[np.flatnonzero(ok)[-1]] if ok.any() else math.nan
    base = float(np.exp(h)) if np.isfinite(h) else math.nan
    ratio = last_finite / base if base > 0 else math.nan
    what = "NaN" if value == "nan" else "Inf"
    where = "the loss" if layer is None else f"layer {layer}'s {tensor}"
    msg = f"First {what} at step {step} in {where}"
    if last_step is not None:
        msg += (f"; the last finite gradient norm was {_fmt(last_finite)} at step {last_step}, "
                f"{_fmt(ratio)}x the run's healthy scale {_fmt(base)}")
    msg += ". " + ("NaN means an Inf was combined with another (Inf - Inf, 0 x Inf): the values "
                   "overflowed first." if value == "nan" else
                   "The values overflowed the float range.")
    return Finding(
        kind="non_finite", severity="critical", step=step, layers=layers,
        evidence={"tensor": tensor, "value": value, "layer": layer,
                  "last_finite_step": last_step, "last_finite_grad_norm": last_finite,
                  "healthy_grad_norm": base, "ratio_to_healthy": ratio,
                  "dtype": ctx.spec.dtype},
        message=msg,
    )


# ------------------------------------------------------------------------------ explosion
@dataclass
class ExplosionAnalysis:
    """When the gradients left their normal range, how fast they grew, and what followed."""

    onset_step: int
    detected_step: int | None  # confirmed by the (replayed) monitor / first non-finite step
    peak_step: int
    baseline: float  # the monitor's baseline B just before the onset
    healthy: float  # the monitor's healthy scale H just before the onset
    peak: float
    growth_per_step: float | None
    recovered: bool
    non_finite_step: int | None
    layers: list[int]  # in the order they left their own range
    layer_first_steps: dict[int, int]
    rule: str | None


def analyze_explosion(ctx: Context, non_finite: Finding | None) -> ExplosionAnalysis | None:
    """The explosion's timeline, if the monitor confirmed one or the run went non-finite."""
    s, rep = ctx.s, ctx.replay
    nf_step = non_finite.step if non_finite is not None else None
    lost: int | None = None
    if rep.confirmed_at is None and nf_step is None:
        lost = lost_progress(ctx)  # hindsight: the loss never came back
        if lost is None:
            return None
    detected: int
    if lost is not None:
        detected = int(s.step[lost])
    else:
        d = rep.confirmed_at if rep.confirmed_at is not None else nf_step
        assert d is not None
        detected = d
    lg = log_of(s.grad_norm)
    finite = np.isfinite(lg)
    i_det = min(s.index_of(detected), len(s) - 1)

    # Onset: the first step of the growth run that led to the detection; extended back over
    # records already above the band, and to the run's start when that step's own update
    # rewrote the weights (the step that launched the growth).
    if lost is not None:
        i_on = lost
    elif rep.run_start_step is not None and rep.confirmed_at == detected:
        i_on = min(s.index_of(rep.run_start_step) + 1, i_det)
    else:  # non-finite without confirmation: walk back over increases
        i_on = i_det
        while i_on > 0 and finite[i_on - 1] and (not finite[i_on] or lg[i_on] > lg[i_on - 1]):
            i_on -= 1
        i_on = min(i_on + 1, i_det) if i_on < i_det else i_on
    while i_on > 0 and finite[i_on - 1] and i_on - 2 >= 0 and lg[i_on - 1] > rep.upper[i_on - 2]:
        i_on -= 1
    if i_on > 0:
        ratio = s.layer["update_norm"][i_on - 1] / np.maximum(s.layer["weight_norm"][i_on - 1], 1e-300)
        if np.nanmax(ratio, initial=0.0) >= UPDATE_RATIO_REWRITE:
            i_on -= 1
    onset = int(s.step[i_on])

    pre = slice(0, i_on) if i_on > 0 else slice(0, 1)
    i_ref = max(i_on - 1, 0)
    baseline = float(np.exp(rep.base[i_ref])) if np.isfinite(rep.base[i_ref]) else math.nan
    healthy = float(np.exp(rep.healthy[i_ref])) if np.isfinite(rep.healthy[i_ref]) else math.nan
    after = np.where(finite[i_on:], lg[i_on:], -np.inf)
    k_peak = i_on + int(np.argmax(after)) if after.size else i_on
    peak = float(s.grad_norm[k_peak])
    growth = None
    if k_peak > i_on and finite[k_peak] and finite[i_on]:
        span = int(s.step[k_peak] - s.step[max(i_on - 1, 0)])
        g0 = lg[max(i_on - 1, 0)] if finite[max(i_on - 1, 0)] else lg[i_on]
        growth = float(math.exp((lg[k_peak] - g0) / max(span, 1)))

    recovered = _recovered(ctx, i_on, k_peak, nf_step)

    # Which layers left their own range, in order (>= 4x their pre-onset median).
    firsts: dict[int, int] = {}
    gl = log_of(s.layer["grad_norm"])
    for layer in range(s.n_layers):
        ref = median(gl[pre, layer][-20:])
        if not math.isfinite(ref):
            continue
        col = gl[i_on:i_det + 1, layer]
        hit = np.flatnonzero(~(col < ref + math.log(4.0)))  # NaN counts as out of range
        if hit.size:
            firsts[layer] = int(s.step[i_on + hit[0]])
    layers = sorted(firsts, key=lambda k: (firsts[k], -_nz(gl[i_det, k])))
    return ExplosionAnalysis(
        onset_step=onset, detected_step=None if lost is not None else int(detected),
        peak_step=int(s.step[k_peak]), baseline=baseline, healthy=healthy, peak=peak, growth_per_step=growth, recovered=recovered,
        non_finite_step=nf_step, layers=layers, layer_first_steps=firsts,
        rule="lost_progress" if lost is not None else rep.rule,
    )



def _nz(x: float) -> float:
    return float(x) if math.isfinite(x) else math.inf


def _recovered(ctx: Context, i_on: int, k_peak: int, nf_step: int | None) -> bool:
    """Did the run come back from the excursion: norm back in band and the loss better than
    before the onset (and better than chance)?"""
    if nf_step is not None or ctx.stop_reason == "explosion":
        return False
    s, rep = ctx.s, ctx.replay
    if k_peak >= len(s) - 1:
        return False
    lg = log_of(s.grad_norm)
    band = rep.upper[i_on - 1] if i_on > 0 else rep.upper[0]
    later = lg[k_peak + 1:]
    if not (later[np.isfinite(later)] <= band).any():
        return False
    pre_loss = median(s.loss[max(0, i_on - 20):max(i_on, 1)])
    tail = s.loss[segment(s, 0.1, tail=True)]
    final = median(tail)
    if not (final < pre_loss):
        return False
    chance = ctx.chance
    return not (chance is not None and final >= CHANCE_MARGIN * chance)
