"""Offline detectors: pure functions over a run's recorded history.

Each detector reads a :class:`Context` (the records as columns, the online monitor replayed
over them, the data's reference levels) and returns findings; :func:`analyze_explosion`
returns the explosion's timeline as well. Thresholds are stated where they are defined, with
the reason for each; none is specific to a scenario.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.diagnostics.medians import column_medians, median, sliding_medians, window_medians
from core.diagnostics.reference import DataScale
from core.diagnostics.replay import Replay, replay_monitor
from core.diagnostics.report import Finding, fmt
from core.diagnostics.series import RunSeries
from core.spec import TrainingSpec
from core.telemetry import NonFiniteEvent, StepRecord

__all__ = [
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
    "loss_levels",
    "lost_progress",
    "replay_monitor",
]

# --- thresholds (why each value) --------------------------------------------------------------
# A run that lost its progress for good is an explosion even if its growth was too irregular
# for the monitor: it had made an order of magnitude of progress (the best, the lowest median
# over windows of LOST_WINDOW of the steps, <= initial / LOST_FACTOR) and the loss ends (median
# of the last LOST_TAIL of the steps) above the initial loss or back at the chance level. Step-based windows read the same
# on a thinned history.
LOST_TAIL = 0.05
LOST_WINDOW = 0.01
LOST_FACTOR = 10.0
# Update-to-weight ratio: ~1e-3 is the classic healthy value (Karpathy's rule of thumb); 0.1
# means every step rewrites a tenth of the weights; >= 0.5 rewrites them outright.
UPDATE_RATIO_HIGH = 0.1
UPDATE_RATIO_REWRITE = 0.5
# Vanishing: a layer's relative gradient ||dW||/||W|| >= 1000x below the output layer's means
# it learns three orders of magnitude slower than the layer the loss reaches directly.
VANISHING_RATIO = 1e-3
# Dead / saturated units: half a layer is a warning; 90% leaves the layer without signal.
UNITS_WARN = 0.5
UNITS_CRITICAL = 0.9
# Flat loss: < 2% improvement from the first to the last records, or ending within 10% of
# the chance-level loss (what the best constant prediction scores).
FLAT_IMPROVEMENT = 0.02
CHANCE_MARGIN = 0.9
# Forward amplification at init: activations growing >= 2x per layer (geometric mean).
FORWARD_GAIN = 2.0
# Loss divergence: the loss >= 100x its initial level (two orders of magnitude).
LOSS_DIVERGENCE = 100.0
# Data scale: inputs or regression targets with RMS >= 10 (or inputs <= 0.01) are unscaled.
DATA_SCALE_HIGH = 10.0
DATA_SCALE_LOW = 0.01


@dataclass
class Context:
    """What every offline detector reads."""

    spec: TrainingSpec
    records: list[StepRecord]
    s: RunSeries
    replay: Replay
    scale: DataScale | None
    stop_reason: str | None
    first_non_finite: NonFiniteEvent | None

    @property
    def chance(self) -> float | None:
        return self.scale.chance_loss if self.scale is not None else None


# ------------------------------------------------------------------------------ helpers
def log_of(x: np.ndarray) -> np.ndarray:
    """Natural log with NaN for values <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.where(x > 0, x, np.nan))


def segment(s: RunSeries, frac: float, tail: bool, minimum: int = 3) -> slice:
    n = len(s)
    k = min(n, max(minimum, math.ceil(frac * n)))
    return slice(n - k, n) if tail else slice(0, k)


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


def _step_windows(s: RunSeries, frac: float) -> np.ndarray:
    """First record index of each consecutive window of ``frac`` of the run's steps (>= 5
    steps); a window runs to the next one's first record."""
    if len(s) == 0:
        return np.empty(0, dtype=np.int64)
    span = int(s.step[-1] - s.step[0]) + 1
    width = max(5, math.ceil(frac * span))  # a median of fewer than 5 steps is one batch
    bins = (s.step - s.step[0]) // width
    return np.concatenate(([0], np.flatnonzero(np.diff(bins)) + 1))


def _initial_loss(s: RunSeries) -> float:
    """The initial level of :func:`loss_levels`."""
    first = np.flatnonzero(s.step < s.step[0] + 5)  # steps 0-4: the monitor's L0
    if first.size < 3:
        first = np.arange(min(3, len(s)))
    return median(s.loss[first])


def _levels(s: RunSeries) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """:func:`loss_levels`, with the windows' first records and medians."""
    starts = _step_windows(s, LOST_WINDOW)
    initial = _initial_loss(s)
    meds = window_medians(s.loss, starts)
    best = float(np.nanmin(meds)) if np.isfinite(meds).any() else math.nan
    tail = s.step >= s.step[-1] - LOST_TAIL * (s.step[-1] - s.step[0])
    if tail.sum() < 3:
        tail = np.arange(len(s)) >= len(s) - 3
    return initial, best, median(s.loss[tail]), starts, meds


def loss_levels(s: RunSeries) -> tuple[float, float, float]:
    """(initial, best, final) loss: the median over steps 0-4 (the monitor's ``initial_loss``;
    at least 3 records on a thinned history), the lowest median over windows of 1% of the steps, and the
    median over the last 5% of the steps (at least 3 records)."""
    initial, best, final, _, _ = _levels(s)
    return initial, best, final


def lost_progress(ctx: Context) -> int | None:
    """Index where the run started to lose its progress for good, if it did (see LOST_*)."""
    s = ctx.s
    if len(s) < 10:
        return None
    initial, best, final, starts, meds = _levels(s)
    chance = ctx.chance
    lost = final > initial and initial >= LOST_FACTOR * best
    # back at the chance level after getting an order of magnitude below it (a run that
    # started far above chance, e.g. saturated, and only reached it has lost nothing)
    lost |= (chance is not None and final >= CHANCE_MARGIN * chance
             and min(initial, chance) >= LOST_FACTOR * best)
    if not lost:
        return None
    # back from the end over the windows whose median stays above the harm level; the onset
    # is the first record above it in the earliest of them
    level = best + 0.5 * (initial - best)
    k = len(starts)
    while k > 0 and meds[k - 1] > level:
        k -= 1
    start = int(starts[k]) if k < len(starts) else len(s) - 1
    above = np.flatnonzero(s.loss[start:] > level)
    return start + int(above[0]) if above.size else start


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
    first = _initial_loss(s)  # loss_levels' initial level (its windows are not needed)
    last = median(s.loss[segment(s, 0.1, tail=True)])
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
        return None
    improvement = 1.0 - last / first
    chance = ctx.chance
    at_chance = chance is not None and chance > 0 and last >= CHANCE_MARGIN * chance
    if improvement >= FLAT_IMPROVEMENT and not at_chance:
        return None
    why = (f"ended at {_fmt(last)}, the chance level {_fmt(chance)} (what a constant "
           "prediction scores)" if at_chance else
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
