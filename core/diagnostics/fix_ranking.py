"""Which fixes a diagnosed run gets, ranked for its verdict.

:class:`FixRanking` holds the run under diagnosis (its
:class:`~core.diagnostics.detectors.Context`) and ranks the builders of
:mod:`core.diagnostics.recommend` for a verdict and its findings: each fix's values come from
the run's healthy records (before the onset, outside spikes), its update-to-weight ratio,
weight growth and predicted initial gains. It is the base of the diagnosis in
:mod:`core.diagnostics.diagnose`, which adds the verdict, summary and per-layer table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.diagnostics import detectors as D
from core.diagnostics import recommend as R
from core.diagnostics.analytic import init_profile
from core.diagnostics.medians import median, nan_column_medians
from core.diagnostics.report import Finding, Recommendation, Verdict

__all__ = ["FixRanking"]


class FixRanking:
    """The run under diagnosis and the fixes its verdict gets, ranked (the base of the
    diagnosis in :mod:`core.diagnostics.diagnose`)."""

    def __init__(self, ctx: D.Context, final: bool) -> None:
        self.ctx = ctx
        self.final = final
        self.s = ctx.s
        self.spec = ctx.spec
        self._healthy: dict[int | None, np.ndarray] = {}

    def recommend(self, verdict: Verdict, f: dict[str, Finding | None],
                  expl: D.ExplosionAnalysis | None, onset_index: int | None) -> list[Recommendation]:
        spec, s = self.spec, self.s
        sc = self.ctx.scale
        x_rms = sc.x_std if sc is not None else 1.0
        y_rms = sc.y_std if sc is not None else None
        recs: list[Recommendation | None] = []
        healthy = self.healthy_slice(onset_index)
        typical = median(s.grad_norm[healthy])
        n_healthy = int(np.isfinite(s.grad_norm[healthy]).sum())
        upd = f["high_update_ratio"]
        upd_ratio = _num(upd.evidence.get("median_update_ratio")) if upd is not None else self._update_ratio(healthy)
        growth = expl.growth_per_step if expl is not None else None
        profile = init_profile(spec, x_rms if x_rms > 0 else 1.0)
        per_layer_gain = _per_layer_gain(profile)
        bad_init = f["depth_amplification"] is not None or per_layer_gain >= 1.5
        data_cause = f["data_scale"] is not None
        peak = expl.peak if expl is not None else None

        if verdict == "exploding":
            at_start = expl is None or onset_index is None or onset_index <= 1
            # the rate the run trained well at (the lowest of its healthy steps: a slowly
            # rising schedule crosses the stability limit long after it left that rate)
            if onset_index is not None and onset_index > 0 and healthy.any():
                stable_lr = float(np.min(s.lr[healthy]))
                onset_lr = float(np.max(s.lr[max(onset_index - 1, 0):onset_index + 1]))
                if onset_lr >= 2.0 * stable_lr:  # the schedule pushed it over the edge
                    recs.append(R.undo_lr_increase(spec, stable_lr, onset_lr,
                                                   int(s.step[onset_index])))
            if bad_init:
                recs += [R.change_init(spec, x_rms), R.batch_norm(spec)]
            if data_cause:
                recs.append(R.standardize_data(spec, x_rms, y_rms))
            lr_rec = R.lower_learning_rate(spec, upd_ratio, growth)
            clip_rec = R.clip_gradients(spec, typical, n_healthy, peak) if n_healthy >= 3 else None
            if (upd_ratio is not None and upd_ratio >= D.UPDATE_RATIO_HIGH) or at_start:
                recs += [lr_rec, clip_rec]
            else:
                recs += [clip_rec, lr_rec]
            if not bad_init:
                recs.append(R.batch_norm(spec))
        elif verdict == "unstable":
            recs += self._spike_fixes(f)
            recs.append(R.clip_gradients(spec, typical, n_healthy, peak))
            recs.append(R.lower_learning_rate(spec, upd_ratio if upd_ratio is not None else None,
                                              growth))
            if data_cause:
                recs.append(R.standardize_data(spec, x_rms, y_rms))
            wg = self._weight_growth()
            if wg is not None and wg > 1e-3:
                recs.append(R.weight_decay(spec, wg))
        elif verdict == "vanishing":
            saturated = f["saturated_units"] is not None
            acts = {h.activation for h in spec.model.hidden}
            if per_layer_gain < 0.7:  # the initialisation shrinks the gradient: fix it first
                recs.append(R.change_init(spec, x_rms, reset_bias=saturated))
            if acts & {"sigmoid", "tanh"} and not (saturated and bad_init):
                recs.append(R.change_activation(
                    spec, "relu", "ReLU's derivative is 1 on its active side, so the gradient "
                    "is not shrunk by a factor <= 0.25 (sigmoid) or by saturation at every layer."))
            recs += [R.change_init(spec, x_rms, reset_bias=saturated), R.batch_norm(spec)]
            if acts & {"sigmoid", "tanh"} and saturated and bad_init:
                recs.append(R.change_activation(spec, "relu", "a non-saturating activation."))
        elif verdict == "stalled":
            dead = f["dead_units"]
            sat = f["saturated_units"]
            if dead is not None:
                # what killed the units: a negative initial bias, a signal that vanished at
                # init, or updates too large for the weights
                if spec.model.init.bias < 0 or any(h.init is not None and h.init.bias < 0 for h in spec.model.hidden):
                    recs.append(R.reset_bias(spec))
                if per_layer_gain < 0.7 or bad_init:
                    recs.append(R.change_init(spec, x_rms, reset_bias=True))
                if upd_ratio is not None and upd_ratio >= D.UPDATE_RATIO_HIGH:
                    recs.append(R.lower_learning_rate(spec, upd_ratio, growth))
                recs.append(R.change_activation(
                    spec, "leaky_relu", "a unit pushed below zero still passes 1% of the "
                    "gradient and can come back.", reset_bias=True))
                recs.append(R.lower_learning_rate(spec, upd_ratio, growth))
            if sat is not None:
                recs += [R.change_init(spec, x_rms, reset_bias=True), R.batch_norm(spec)]
                if data_cause:
                    recs.append(R.standardize_data(spec, x_rms, y_rms))
            if dead is None and sat is None:
                # a tiny initialisation makes every update tiny: raising the rate would only
                # hide it (and blow up once the weights grow), so the init comes first and
                # the rate is raised only when the init is sound
                if bad_init or per_layer_gain < 0.7:
                    recs += [R.change_init(spec, x_rms), R.batch_norm(spec)]
                elif upd_ratio is not None and upd_ratio < 1e-4:
                    recs.append(R.raise_learning_rate(spec, upd_ratio))
                recs.append(R.batch_norm(spec))
        else:  # healthy: only optional hardening when spikes were seen
            if f["gradient_spike"] is not None:
                recs += self._spike_fixes(f)
                normal = s.grad_norm[healthy]
                normal = normal[np.isfinite(normal)]
                if normal.size:
                    recs.append(R.clip_above_normal(spec, float(normal.max()), typical,
                                                    n_healthy))
        out: list[Recommendation] = []
        seen: set[str] = set()
        for r in recs:
            if r is None:
                continue
            key = repr(sorted(r.spec_patch.items()))
            if key in seen:
                continue
            seen.add(key)
            out.append(r)
        return out

    def _spike_fixes(self, f: dict[str, Finding | None]) -> list[Recommendation | None]:
        """The fixes that fit the mechanism the findings name, first."""
        spec = self.spec
        recs: list[Recommendation | None] = []
        cat = f["catapult"]
        if cat is not None:
            back = _num(cat.evidence.get("recovered_step")) or 10.0
            recs.append(R.warmup(spec, int(10 * back)))
        spike = next((x for x in (f["gradient_spike"], f["setback"]) if x is not None
                      and x.evidence.get("mechanism") == "adam_second_moment"), None)
        if spike is not None:
            before = _num(spike.evidence.get("baseline_grad_norm")) or math.nan
            recs += [R.adam_epsilon(spec, before), R.adam_beta2(spec),
                     R.decay_learning_rate(spec, "a smaller late step cannot overshoot when the "
                                                 "second moment has decayed.")]
        if f["oscillation"] is not None:
            recs.append(R.decay_learning_rate(
                spec, "the step size sits at the edge of stability (curvature = 2 / lr); a "
                      "decaying rate moves below it as training settles."))
        return recs

    def healthy_slice(self, onset_index: int | None) -> np.ndarray:
        """Records before the onset, outside spikes (within the monitor's band). (Read-only:
        the recommendations and the per-layer summary share it.)"""
        if onset_index not in self._healthy:
            self._healthy[onset_index] = self._healthy_mask(onset_index)
            self._healthy[onset_index].flags.writeable = False
        return self._healthy[onset_index]

    def _healthy_mask(self, onset_index: int | None) -> np.ndarray:
        s, rep = self.s, self.ctx.replay
        stop = onset_index if onset_index is not None else len(s)
        idx = np.arange(len(s))
        lg = np.log(np.where(s.grad_norm > 0, s.grad_norm, np.nan))
        prev_up = np.concatenate([[np.inf], rep.upper[:-1]])
        with np.errstate(invalid="ignore"):
            ok = (idx < stop) & np.isfinite(lg) & ~(lg > prev_up)
        if ok.sum() < 3:
            ok = (idx < max(stop, 1)) & np.isfinite(lg)
        return ok

    def _update_ratio(self, mask: np.ndarray) -> float | None:
        s = self.s
        with np.errstate(divide="ignore", invalid="ignore"):
            r = s.layer["update_norm"][mask] / s.layer["weight_norm"][mask]
        if r.size == 0:
            return None
        med = nan_column_medians(np.where(np.isfinite(r), r, np.nan)) if np.isfinite(r).any() else None
        if med is None or not np.isfinite(med).any():
            return None
        return float(np.nanmax(med))

    def _weight_growth(self) -> float | None:
        s = self.s
        w = np.sqrt(np.nansum(np.square(s.layer["weight_norm"]), axis=1))
        ok = np.isfinite(w) & (w > 0)
        if ok.sum() < 10:
            return None
        steps = s.step[ok]
        span = int(steps[-1] - steps[0])
        if span <= 0:
            return None
        return float(math.log(w[ok][-1] / w[ok][0]) / span)


def _per_layer_gain(profile: list[Any]) -> float:
    if len(profile) < 3:
        return 1.0
    g = 1.0
    for layer in profile[1:-1]:
        g *= layer.backward_gain
    return float(g ** (1.0 / (len(profile) - 2)))


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
