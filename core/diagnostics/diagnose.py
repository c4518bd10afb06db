"""``diagnose(history)``: verdict, findings, forecast and ranked fixes for one run.

The verdict is gated on evidence that training is harmed:

- ``exploding``: a non-finite value; an explosion the online monitor confirmed (see
  :mod:`core.diagnostics.monitor`) that did not recover; a run that made an order of magnitude
  of progress and ended above its initial loss or back at the chance level (it lost what it
  learned, :func:`core.diagnostics.detectors.lost_progress`); or a loss that rose two orders of
  magnitude and stayed there;
- ``stalled``: dead ReLU units (>= 90% of a layer), or a flat loss / a loss at chance level;
- ``vanishing``: a layer learning >= 1000x slower than the output layer, with a flat loss;
- ``unstable``: something that set the loss back and recovered — spikes with a loss setback,
  the monitor's setback or catapult warning (it saw every step, so a thinned history keeps
  them), a recovered explosion — or a period-2 oscillation of the gradient norm;
- ``healthy``: anything else (a spike that did not set the loss back is reported, not judged).

The monitor's alerts in ``history.alerts`` take precedence over what a replay over thinned
records would see: the full record, ``record_every > 1`` and the service's thinned history
give the same verdict.

The fixes are ranked by :class:`core.diagnostics.fix_ranking.FixRanking`, the base of the
diagnosis here (which adds the verdict, the findings' grading, the summary and the per-layer table).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.diagnostics import detectors as D
from core.diagnostics import transients as T
from core.diagnostics.fix_ranking import FixRanking
from core.diagnostics.medians import column_medians, median
from core.diagnostics.reference import DataScale, data_scale
from core.diagnostics.report import (
    DiagnosticReport,
    Finding,
    LayerSummary,
    Recommendation,
    Verdict,
    fmt,
)
from core.diagnostics.series import RunSeries, layer_activations, unique_steps
from core.spec import TrainingSpec
from core.telemetry import NonFiniteEvent, StepRecord

__all__ = ["diagnose"]

_SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def diagnose(history: Any, *, scale: DataScale | None = None) -> DiagnosticReport:
    """Diagnose a run: a :class:`~core.trainer.TrainingResult` or any object with ``spec``,
    ``steps`` (StepRecords, possibly thinned), ``epochs``, ``stop_reason`` (None while the run
    is in progress: the report is then provisional, ``final=False``) and
    ``first_non_finite`` (may be None: non-finite values are found in the records too).
    Optional ``alerts`` (the online monitor's findings, objects or their JSON) let a thinned
    history keep what the monitor saw on every step. ``scale``: the data's scale and chance
    loss when the caller measured them (an ``uploaded`` spec without its arrays attached);
    None measures them from the spec."""
    spec = history.spec
    if not isinstance(spec, TrainingSpec):
        spec = TrainingSpec.model_validate(spec)
    # the records the columns hold: the replay and the detectors index them together
    records: list[StepRecord] = unique_steps(getattr(history, "steps", None) or [])
    stop_reason = getattr(history, "stop_reason", None)
    nf_event: NonFiniteEvent | None = getattr(history, "first_non_finite", None)
    final = stop_reason is not None
    if not records:
        return DiagnosticReport(
            verdict="healthy",
            summary=("No steps were recorded: nothing to diagnose." if final else
                     "No steps recorded yet: nothing to diagnose."),
            first_bad_step=None, final=final, stop_reason=stop_reason, steps_analyzed=0,
        )
    s = RunSeries.from_records(spec, records)
    replay = D.replay_monitor(spec, records, s)
    _merge_online_alerts(replay, getattr(history, "alerts", None) or [])
    ctx = D.Context(spec=spec, records=records, s=s, replay=replay,
                    scale=scale if scale is not None else data_scale(spec),
                    stop_reason=stop_reason, first_non_finite=nf_event)
    return _Diagnosis(ctx, final).report()


def _merge_online_alerts(replay: D.Replay, alerts: list[Any]) -> None:
    """The live monitor saw every step; a thinned history may hide what it confirmed or the
    transients (setback, catapult) it warned about."""
    for a in alerts:
        if isinstance(a, dict):  # as stored by the service (JSON)
            try:
                a = Finding.model_validate(a)
            except ValueError:
                continue
        if not isinstance(a, Finding):
            continue
        if a.kind == "gradient_spike":  # the live one saw every step: it replaces the replay's
            catapult = a.evidence.get("mechanism") == "catapult"
            replay.spike_alerts = [x for x in replay.spike_alerts
                                   if (x.evidence.get("mechanism") == "catapult") != catapult]
            replay.spike_alerts.append(a)
            continue
        if a.kind != "gradient_explosion" or a.severity != "critical":
            continue
        if a.step is None or (replay.confirmed_at is not None and replay.confirmed_at <= a.step):
            continue
        replay.confirmed_at = a.step
        rule = a.evidence.get("rule")
        replay.rule = rule if isinstance(rule, str) else None
        start = a.evidence.get("growth_started_at")
        replay.run_start_step = start if isinstance(start, int) else None
        break


class _Diagnosis(FixRanking):
    def report(self) -> DiagnosticReport:
        ctx, s = self.ctx, self.s
        nf = D.detect_non_finite(ctx)
        expl = D.analyze_explosion(ctx, nf)
        onset_index = s.index_of(expl.onset_step) if expl is not None else None
        spikes = T.find_spikes(ctx)
        found: dict[str, Finding | None] = {
            "non_finite": nf,
            "gradient_explosion": self._explosion_finding(expl) if expl is not None else None,
            "depth_amplification": D.detect_depth_amplification(ctx),
            "loss_divergence": D.detect_loss_divergence(ctx),
            "high_update_ratio": D.detect_update_ratio(ctx, onset_index),
            "gradient_spike": T.detect_spikes(ctx, spikes),
            "catapult": T.detect_catapult(ctx),
            "setback": None,
            "oscillation": T.detect_oscillation(ctx),
            "vanishing_gradients": D.detect_vanishing(ctx),
            "dead_units": D.detect_dead_units(ctx),
            "saturated_units": D.detect_saturation(ctx),
            "flat_loss": D.detect_flat_loss(ctx),
            "data_scale": D.detect_data_scale(ctx),
        }
        for a in ctx.replay.spike_alerts:  # what the monitor saw on every step
            if a.evidence.get("mechanism") == "catapult":
                found["catapult"] = found["catapult"] or a
            else:
                found["setback"] = a
        verdict, first_bad = self._verdict(found, expl, spikes)
        self._grade(found, verdict)
        findings = sorted((f for f in found.values() if f is not None),
                          key=lambda f: (_SEVERITY[f.severity], f.step if f.step is not None else -1))
        forecast = self._forecast(expl, nf)
        recs = self.recommend(verdict, found, expl, onset_index)
        return DiagnosticReport(
            verdict=verdict,
            summary=self._summary(verdict, found, expl, first_bad, recs),
            first_bad_step=first_bad,
            final=self.final,
            stop_reason=ctx.stop_reason,
            steps_analyzed=len(s),
            last_step=int(s.step[-1]),
            findings=findings,
            recommendations=recs,
            forecast=forecast,
            layers=self._layers(onset_index),
        )

    # ------------------------------------------------------------------ verdict
    def _verdict(self, f: dict[str, Finding | None], expl: D.ExplosionAnalysis | None,
                 spikes: list[T.Spike]) -> tuple[Verdict, int | None]:
        ld = f["loss_divergence"]
        if f["non_finite"] is not None or (expl is not None and not expl.recovered):
            onset = expl.onset_step if expl is not None else f["non_finite"].step  # type: ignore[union-attr]
            if f["depth_amplification"] is not None and expl is not None and expl.onset_step <= int(self.s.step[0]) + 1:
                onset = int(self.s.step[0])
            return "exploding", onset
        if ld is not None and ld.severity == "critical":
            return "exploding", ld.step
        dead = f["dead_units"]
        flat = f["flat_loss"]
        vanish = f["vanishing_gradients"]
        sat = f["saturated_units"]
        harmful = [sp for sp in spikes if sp.harmful]
        setback = f["setback"]
        if (harmful or setback is not None) and flat is not None:
            # spikes that set the loss back before the units died / saturated caused the stall
            first_spike = self._first_setback(harmful, setback)
            stall = min((x.step for x in (dead, vanish, sat) if x is not None and x.step is not None),
                        default=None)
            if stall is None or first_spike < stall:
                return "unstable", first_spike
        if dead is not None and dead.severity == "critical" and flat is not None:
            return "stalled", dead.step
        if vanish is not None and flat is not None:
            return "vanishing", vanish.step
        if sat is not None and sat.severity == "critical" and flat is not None:
            # >= 90% of a layer in the flat tails: the local derivative itself vanishes
            return "vanishing", sat.step
        if flat is not None:
            first = min((x.step for x in (dead, sat) if x is not None and x.step is not None),
                        default=flat.step)
            return "stalled", first
        if expl is not None:  # confirmed runaway that recovered
            return "unstable", expl.onset_step
        if f["catapult"] is not None:
            return "unstable", f["catapult"].step
        if harmful or setback is not None:
            return "unstable", self._first_setback(harmful, setback)
        if f["oscillation"] is not None:
            return "unstable", f["oscillation"].step
        return "healthy", None

    def _first_setback(self, harmful: list[T.Spike], setback: Finding | None) -> int:
        """The first step the loss was set back: the first harmful spike or the monitor's
        setback, whichever came first."""
        steps = [int(self.s.step[harmful[0].start_index])] if harmful else []
        if setback is not None and setback.step is not None:
            steps.append(setback.step)
        return min(steps) if steps else int(self.s.step[0])

    def _grade(self, f: dict[str, Finding | None], verdict: Verdict) -> None:
        """Raise the findings that decided the verdict to critical."""
        decisive = {
            "exploding": ("non_finite", "gradient_explosion", "loss_divergence"),
            "stalled": ("dead_units", "flat_loss", "saturated_units"),
            "vanishing": ("vanishing_gradients", "flat_loss", "saturated_units"),
            "unstable": ("gradient_explosion", "gradient_spike", "oscillation", "catapult",
                         "setback"),
            "healthy": (),
        }[verdict]
        for k in decisive:
            x = f.get(k)
            if x is not None and x.severity != "info":
                f[k] = x.model_copy(update={"severity": "critical"})
        if verdict != "exploding" and f["gradient_explosion"] is not None:
            g = f["gradient_explosion"]
            f["gradient_explosion"] = g.model_copy(update={"severity": "warning"})

    def _explosion_finding(self, e: D.ExplosionAnalysis) -> Finding:
        layers_txt = ""
        if e.layers:
            first = e.layers[0]
            layers_txt = f"; layer {first} left its range first (step {e.layer_first_steps[first]})"
            if len(e.layers) > 1:
                layers_txt += f", then layers {', '.join(map(str, e.layers[1:4]))}"
        growth = f" (x{fmt(e.growth_per_step)}/step)" if e.growth_per_step else ""
        ratio = e.peak / e.healthy if e.healthy > 0 else math.inf
        end = (f"; it reached a non-finite value at step {e.non_finite_step}"
               if e.non_finite_step is not None else
               "; it came back and the loss recovered" if e.recovered else
               "; the loss did not recover")
        if e.detected_step is not None:
            how = f"The online monitor confirmed it at step {e.detected_step} (rule {e.rule})."
        else:
            how = ("The growth was too irregular for the online monitor; the loss ended above "
                   "its initial level and far above its best, and never came back.")
        return Finding(
            kind="gradient_explosion", severity="critical" if not e.recovered else "warning",
            step=e.onset_step, layers=e.layers,
            # baseline_norm / peak_norm are the DESIGN contract's names (kept); the
            # *_grad_norm keys say the same numbers in the README's vocabulary
            evidence={"baseline_norm": e.baseline, "peak_norm": e.peak,
                      "baseline_grad_norm": e.baseline, "healthy_grad_norm": e.healthy,
                      "peak_grad_norm": e.peak, "peak_step": e.peak_step,
                      "peak_to_healthy": ratio,
                      "growth_per_step": e.growth_per_step, "onset_step": e.onset_step,
                      "detected_step": e.detected_step,
                      "detection_latency": (e.detected_step - e.onset_step
                                            if e.detected_step is not None else None),
                      "rule": e.rule, "recovered": int(e.recovered)},
            message=(f"The global gradient norm rose from step {e.onset_step} to "
                     f"{fmt(e.peak)} at step {e.peak_step}{growth}, {fmt(ratio)}x the run's "
                     f"healthy scale {fmt(e.healthy)} (baseline before the onset "
                     f"{fmt(e.baseline)}){layers_txt}{end}. {how}"),
        )

    # ------------------------------------------------------------------ forecast
    def _forecast(self, expl: D.ExplosionAnalysis | None, nf: Finding | None) -> Any:
        fc = self.ctx.replay.forecast
        if fc is None:
            return None
        actual = nf.step if nf is not None else None
        return fc.model_copy(update={"actual_non_finite_step": actual})

    # ------------------------------------------------------------------ summary
    def _summary(self, verdict: Verdict, f: dict[str, Finding | None],
                 expl: D.ExplosionAnalysis | None, first_bad: int | None,
                 recs: list[Recommendation]) -> str:
        s = self.s
        parts: list[str] = []
        # steps trained, not records (a run may record one step in N)
        prov = "" if self.final else f"(provisional, {int(s.step[-1]) + 1} steps so far) "
        if verdict == "exploding":
            if expl is not None:
                parts.append(f"Exploding{' ' + prov.strip() if prov else ''}: "
                             f"{_first_sentence(f['gradient_explosion'])}")
            else:
                parts.append(f"Exploding{' ' + prov.strip() if prov else ''}.")
            for k in ("non_finite", "loss_divergence", "depth_amplification", "high_update_ratio",
                      "data_scale"):
                if f[k] is not None and k != "gradient_explosion":
                    parts.append(_first_sentence(f[k]))
            fc = self._forecast(expl, f["non_finite"])
            if fc is not None and fc.actual_non_finite_step is None:
                parts.append(f"Forecast at step {fc.made_at_step}: {fc.message}")
            elif fc is not None:  # hindsight: quote the forecast against what happened
                parts.append(f"At step {fc.made_at_step} the forecast was overflow at step "
                             f"~{fc.predicted_overflow_step}; the first non-finite value came "
                             f"at step {fc.actual_non_finite_step}.")
        elif verdict == "healthy":
            first = s.loss[: max(1, len(s) // 20)]
            last = s.loss[-max(1, len(s) // 10):]
            parts.append(f"Healthy{' ' + prov.strip() if prov else ''}: the loss went from {median(first):.3g} to "
                         f"{median(last):.3g} and the gradient norm stayed in its normal range.")
            if f["gradient_spike"] is not None:
                parts.append(_first_sentence(f["gradient_spike"]))
        else:
            title = {"vanishing": "Vanishing gradients", "stalled": "Stalled",
                     "unstable": "Unstable"}[verdict]
            parts.append(f"{title} {prov}from step {first_bad}:")
            for k in ("gradient_explosion", "catapult", "setback", "gradient_spike", "oscillation",
                      "vanishing_gradients",
                      "dead_units", "saturated_units", "flat_loss", "high_update_ratio",
                      "data_scale"):
                if f[k] is not None:
                    parts.append(_first_sentence(f[k]))
        if recs:  # a healthy run's are optional hardening, not fixes
            parts.append(f"{'Optional' if verdict == 'healthy' else 'First fix'}: "
                         f"{recs[0].action.replace('_', ' ')} "
                         f"({_patch_text(recs[0].spec_patch)}).")
        return " ".join(p.replace(" .", ".").replace("  ", " ") for p in parts)

    # ------------------------------------------------------------------ per layer
    def _layers(self, onset_index: int | None) -> list[LayerSummary]:
        s = self.s
        acts = layer_activations(self.spec)
        stop = onset_index if onset_index is not None else len(s)
        out: list[LayerSummary] = []
        g = s.layer["grad_norm"]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = s.layer["update_norm"] / s.layer["weight_norm"]
        tail = slice(max(0, len(s) - max(3, len(s) // 4)), len(s))
        healthy = self.healthy_slice(onset_index)
        baseline = column_medians(g[healthy]).tolist()
        update_ratio = column_medians(ratio[:max(stop, 1)]).tolist()
        dead = column_medians(s.layer["dead_fraction"][tail]).tolist()
        saturated = column_medians(s.layer["saturated_fraction"][tail]).tolist()
        for k in range(s.n_layers):
            col = g[:, k]
            fin = np.where(np.isfinite(col), col, -np.inf)
            pk = int(np.argmax(fin)) if np.isfinite(col).any() else 0
            out.append(LayerSummary(
                layer=k, activation=acts[k],
                baseline_grad_norm=baseline[k],
                peak_grad_norm=float(col[pk]), peak_step=int(s.step[pk]),
                final_grad_norm=float(col[-1]),
                update_ratio=_opt(update_ratio[k]),
                dead_fraction=_opt(dead[k]),
                saturated_fraction=_opt(saturated[k]),
            ))
        return out


def _opt(x: float) -> float | None:
    return None if x != x else x



def _first_sentence(f: Finding | None) -> str:
    if f is None:
        return ""
    msg = f.message
    cut = msg.find(". ")
    return msg if cut < 0 else msg[:cut + 1]


def _patch_text(patch: dict[str, Any], prefix: str = "") -> str:
    items: list[str] = []
    for k, v in patch.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            items.append(_patch_text(v, path + "."))
        elif isinstance(v, list):
            items.append(f"{path}=[...]")
        elif v is None:
            items.append(f"{path}=null (removed)")
        else:
            items.append(f"{path}={v}")
    return ", ".join(items)
