"""Transients: spikes, setbacks and catapults that recovered, their mechanism, oscillation.

A transient is reported, and judged ``unstable`` when it set the loss back; it is never an
explosion. Each finding names its mechanism where the evidence supports one (``MECHANISMS``)
so the recommendation can fit it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.diagnostics.detectors import Context, log_of, segment
from core.diagnostics.medians import median
from core.diagnostics.monitor import WARMUP
from core.diagnostics.report import Finding, fmt
from core.diagnostics.series import RunSeries

__all__ = [
    "MECHANISMS",
    "Spike",
    "detect_catapult",
    "detect_oscillation",
    "detect_spikes",
    "find_spikes",
    "spike_mechanism",
]

# An excursion is a stretch of records above the monitor's normal band (>= 2x and >= 3 robust
# spreads above the baseline). It is reported as a spike when it reached 10x the baseline (an
# order of magnitude, well beyond mini-batch noise) or when it set the loss back.
SPIKE_RATIO = 10.0
# A spike harms training when the median loss of the records after it is >= 2x the median of
# the records before it (windows of SPIKE_WINDOW records) AND that undoes >= half of the
# progress made since the start: late in training a loss of 0.05 -> 0.1 is noise, not a loss
# of ground.
SPIKE_LOSS_SETBACK = 2.0
SPIKE_PROGRESS_LOST = 0.5
SPIKE_WINDOW = 10


@dataclass
class Spike:
    start_index: int
    end_index: int  # first record back in band
    peak_index: int
    ratio: float
    loss_ratio: float  # peak loss in the excursion / pre-excursion median loss
    setback: float  # median loss after / median loss before
    progress_lost: float  # (after - before) / (initial - before): share of progress undone

    @property
    def harmful(self) -> bool:
        return self.setback >= SPIKE_LOSS_SETBACK and not self.progress_lost < SPIKE_PROGRESS_LOST


def find_spikes(ctx: Context) -> list[Spike]:
    """Excursions >= SPIKE_RATIO x the baseline B that also reached the healthy scale H (on a
    converged run B is tiny and its noise is not a spike), and what the loss did.

    Only excursions that came back into the band are spikes; harmful ones always count."""
    lg = log_of(ctx.s.grad_norm)
    h = ctx.replay.healthy
    return [e for e in _excursions(ctx, include_open=False)
            if e.harmful or (e.ratio >= SPIKE_RATIO
                             and not lg[e.peak_index] < h[max(e.start_index - 1, 0)])]


def _excursions(ctx: Context, include_open: bool) -> list[Spike]:
    s, rep = ctx.s, ctx.replay
    lg = log_of(s.grad_norm)
    ll = s.loss
    n = len(s)
    spikes: list[Spike] = []
    if n <= WARMUP + 1:  # no band before the baseline is established
        return spikes
    # where an excursion can start: a finite norm above the finite band edge of the record
    # before; the scans below run over Python floats (each record is visited once)
    up = rep.upper[:n]  # (the replay saw every record: duplicated steps too)
    with np.errstate(invalid="ignore"):
        above = np.isfinite(lg[1:]) & np.isfinite(up[:-1]) & (lg[1:] > up[:-1])
    starts = (np.flatnonzero(above[WARMUP:]) + WARMUP + 1).tolist()
    lgl: list[float] = lg.tolist()
    base: list[float] = rep.base.tolist()
    upper: list[float] = up.tolist()
    initial = median(ll[:3])
    i = WARMUP + 1
    for i0 in starts:
        if i0 < i:
            continue
        i = i0
        prev_base, prev_up = base[i - 1], upper[i - 1]
        j = i
        while j < n and not (math.isfinite(lgl[j]) and lgl[j] <= prev_up):
            j += 1
        if j >= n and not include_open:
            break
        seg = slice(i, min(j, n))
        k, top = i, -math.inf  # the first largest finite norm (the start if none is finite)
        for t in range(i, min(j, n)):
            v = lgl[t]
            if v > top and math.isfinite(v):
                k, top = t, v
        pre = median(ll[max(0, i - SPIKE_WINDOW):i])
        peak_loss = float(np.nanmax(np.where(np.isfinite(ll[seg]), ll[seg], np.nan))) if np.isfinite(ll[seg]).any() else math.nan
        post = median(ll[i:i + SPIKE_WINDOW])
        ratio = float(math.exp(lgl[k] - prev_base)) if math.isfinite(lgl[k]) else math.inf
        gained = initial - pre
        lost = (post - pre) / gained if gained > 0 else math.inf
        spikes.append(Spike(i, j, k, ratio, peak_loss / pre if pre > 0 else math.nan,
                            post / pre if pre > 0 else math.nan, lost))
        i = j + 1
    return spikes


MECHANISMS = {
    "adam_second_moment": "Adam's second-moment estimate had decayed while the gradient was "
                          "tiny, so the effective step outgrew the stability limit",
    "outlier_batch": "one batch (a single step) produced it: an outlier example",
    "catapult": "the first steps were past the stability limit of the initial curvature "
                "(the catapult phase): the loss jumped, the curvature fell, it recovered",
    "unknown": "no single mechanism fits the evidence",
}


def spike_mechanism(ctx: Context, sp: Spike) -> str:
    """What caused a spike, where the evidence supports one (see MECHANISMS)."""
    rep = ctx.replay
    i0 = max(sp.start_index - 1, 0)
    converged = rep.healthy[i0] - rep.base[i0] >= math.log(100.0)  # B two orders below H
    if ctx.spec.optimizer.name in ("adam", "adamw", "rmsprop") and converged:
        return "adam_second_moment"
    if sp.end_index - sp.start_index <= 1:
        return "outlier_batch"
    return "unknown"


def detect_spikes(ctx: Context, spikes: list[Spike]) -> Finding | None:
    """Transient gradient spikes that recovered; harmful when the loss was set back."""
    if not spikes:
        return None
    s = ctx.s
    harmful = [sp for sp in spikes if sp.harmful]
    worst = max(spikes, key=lambda sp: sp.ratio)
    first = harmful[0] if harmful else spikes[0]
    mechanism = spike_mechanism(ctx, first)
    i0 = max(first.start_index - 1, 0)
    before = float(np.exp(ctx.replay.base[i0])) if np.isfinite(ctx.replay.base[i0]) else math.nan
    ratio = worst.ratio
    return Finding(
        kind="gradient_spike", severity="warning" if harmful else "info",
        step=int(s.step[first.start_index]),
        layers=_top_layers(s, worst.peak_index),
        evidence={"spikes": len(spikes), "harmful_spikes": len(harmful),
                  "max_ratio_to_baseline": ratio, "max_spike_step": int(s.step[worst.peak_index]),
                  "loss_ratio_at_spike": worst.loss_ratio,
                  "max_loss_setback": max(sp.setback for sp in spikes),
                  "mechanism": mechanism, "baseline_grad_norm": before},
        message=(f"{len(spikes)} transient gradient spike(s), up to {fmt(ratio)}x the "
                 f"baseline at step {int(s.step[worst.peak_index])}; the norm returned to its "
                 "normal range. " + (
                     f"{len(harmful)} set the loss back >= {fmt(SPIKE_LOSS_SETBACK)}x (median of "
                     f"the next {SPIKE_WINDOW} steps vs the previous {SPIKE_WINDOW})."
                     if harmful else "The loss was not set back: training was not harmed.")
                 + f" Mechanism ({mechanism}): {MECHANISMS[mechanism]}."),
    )


CATAPULT_WINDOW = 50  # records: a catapult happens within the first steps
CATAPULT_JUMP = 2.0


def detect_catapult(ctx: Context) -> Finding | None:
    """An early jump of the loss (>= 2x its first value for three records in a row, the
    gradient norm too) that came back below the first loss within the first records: the
    catapult phase."""
    s = ctx.s
    n = min(len(s), CATAPULT_WINDOW)
    if n < 8:
        return None
    loss, g = s.loss[:n], s.grad_norm[:n]
    if not (np.isfinite(loss).all() and np.isfinite(g).all()) or not loss[0] > 0:
        return None
    k = int(np.argmax(loss))
    high = loss >= CATAPULT_JUMP * loss[0]
    # a catapult starts at once and lasts a few steps (three in a row above the jump level,
    # from record 1 or 2): one batch is noise, a later jump is something else
    if (k == 0 or not (high[2:5] & high[1:4] & high[0:3])[1:].any()
            or np.max(g[:k + 1]) < CATAPULT_JUMP * g[0]):
        return None
    back = np.flatnonzero(loss[k:] < loss[0])
    if not back.size:
        return None
    jump = float(loss[k] / loss[0])
    return Finding(
        kind="gradient_spike", severity="warning", step=int(s.step[1]), layers=[],
        evidence={"mechanism": "catapult", "first_loss": float(loss[0]),
                  "peak_loss": float(loss[k]), "peak_step": int(s.step[k]),
                  "loss_jump": jump, "recovered_step": int(s.step[k + int(back[0])])},
        message=(f"The loss jumped {fmt(jump)}x from {fmt(float(loss[0]))} to "
                 f"{fmt(float(loss[k]))} at step {int(s.step[k])} and was back below where it "
                 f"started at step {int(s.step[k + int(back[0])])}. Mechanism (catapult): "
                 f"{MECHANISMS['catapult']}."),
    )


def _top_layers(s: RunSeries, i: int) -> list[int]:
    g = s.layer["grad_norm"][i]
    if not np.isfinite(g).any():
        return []
    top = float(np.nanmax(g))
    return [int(k) for k in np.flatnonzero(g >= 0.5 * top)]


def detect_oscillation(ctx: Context) -> Finding | None:
    """Period-2 oscillation of the gradient norm (a step size just past the stability edge)."""
    s = ctx.s
    seg = segment(s, 0.5, tail=True, minimum=20)
    lg = log_of(s.grad_norm[seg])
    d = np.diff(lg[np.isfinite(lg)])
    if d.size < 20:
        return None
    flips = float(np.mean(np.sign(d[1:]) != np.sign(d[:-1])))
    amp = float(np.median(np.abs(d)))
    # i.i.d. noise flips sign 2/3 of the time; a period-2 cycle flips nearly always
    if flips < 0.9 or amp < math.log(3.0):
        return None
    return Finding(
        kind="oscillation", severity="warning", step=int(s.step[seg][0]), layers=[],
        evidence={"sign_flip_fraction": flips, "median_step_ratio": math.exp(amp),
                  "mechanism": "edge_of_stability"},
        message=(f"The gradient norm alternates up and down by x{fmt(math.exp(amp))} on "
                 f"{flips:.0%} of steps. Mechanism (edge_of_stability): the curvature has risen "
                 "to 2 / learning rate and the iterates bounce across the valley (Cohen et al. "
                 "2021)."),
    )


