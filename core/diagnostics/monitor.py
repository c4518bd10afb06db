"""The online monitor: fed every step by the trainer, it confirms runaway gradient growth early.

Per step it does O(layers) scalar work on running state (no scan of the history), so it can
watch every step of a fast run. The state is:

- a **robust baseline** of the log global gradient norm: the median of the first
  ``WARMUP`` steps, then a Huber-clipped exponential moving average that a spike or a
  growth phase cannot drag along, with a robust spread (mean absolute deviation of the log
  norm). The *normal band* is ``baseline * exp(max(3 * spread, log 2))``.
- the current **run of increases**: how many consecutive steps the norm has grown, and the
  norm and loss where the run began.

Explosion is *confirmed* (``explosion_confirmed``) on evidence of runaway growth that harms
training, never on size alone:

1. a non-finite loss, gradient, weight, update or activation (the run overflowed); or
2. **runaway growth**: at least ``MIN_RUN`` consecutive increases of the global norm (or two
   that multiply it by ``FAST_GROWTH``) that multiply it by ``RUN_GROWTH`` *even without the
   largest single increase* (one jump is a spike, not a runaway), with the norm out of the
   normal band and at least ``RUN_GROWTH`` times the baseline, while

   - the loss over the same steps rose at least ``LOSS_RISE`` times (``FAST_GROWTH`` on the
     fast path): a descent method that makes its loss worse as its gradient grows is
     diverging; early training, where the norm grows while the loss falls, is not; and
   - the weight updates grew along (at least half as fast, in log terms): the growth feeds on
     itself, big gradient -> big step -> steeper region -> bigger gradient. When clipping or
     an adaptive optimizer (Adam, RMSprop, Adagrad) bounds the step, the pre-clip norm can
     grow without that loop and the run is not confirmed on growth alone; or
3. **sustained blow-up**: the norm stayed above ``SUSTAINED`` times the baseline for
   ``SUSTAIN_STEPS`` records while the loss stayed ``SUSTAINED_LOSS`` times above its initial
   level (for growth too irregular for rule 2); or
4. **overshoot**: consecutive updates each changed some layer's weights by at least
   ``REWRITE`` of their norm (the step is as large as the weights: the gradient, not the
   weights, now sets them), that layer's weights have at least doubled since (the steps feed
   on themselves; bounded steps, e.g. clipped ones, only make the weights bounce), and the
   loss is ``OVERSHOOT_LOSS`` times the loss before them. This is the explosion mechanism itself, seen from step 0 (a gradient far too
   large for its weights at init, from the data scale or the learning rate) before any
   baseline exists.

A single spike that recovers satisfies none of these. While growth is underway the monitor
also forecasts the steps left until float overflow (see :mod:`core.diagnostics.forecast`).
"""

from __future__ import annotations

import math
from collections import deque

from core.diagnostics.forecast import OverflowForecaster
from core.diagnostics.report import Finding
from core.diagnostics.series import safe_log
from core.spec import TrainingSpec
from core.telemetry import StepRecord, TensorKind

__all__ = ["Monitor", "MonitorState"]

WARMUP = 5
ALPHA = 0.05  # EMA weight of the baseline once warmed up (time constant ~20 records)
MIN_SPREAD = math.log(1.25)
MAX_SPREAD = math.log(2.0)  # a "normal band" wider than x8 (3 spreads) would not be one
BAND_MIN = math.log(2.0)
MIN_RUN = 3
RUN_GROWTH = math.log(4.0)
FAST_GROWTH = math.log(100.0)
FEEDBACK = 0.5
LOSS_RISE = math.log(2.0)
SUSTAINED = math.log(100.0)
SUSTAINED_LOSS = math.log(10.0)
SUSTAIN_STEPS = 3
REWRITE = 0.5
OVERSHOOT_LOSS = math.log(10.0)


class MonitorState:
    """Running baseline, normal band and growth run of the log global gradient norm."""

    __slots__ = (
        "_sustain", "_warm", "base", "last_lg", "last_ll", "last_lu", "last_step", "loss_ref",
        "n", "run_len", "run_max_inc", "run_start_lg", "run_start_ll", "run_start_lu",
        "run_start_step", "spread",
    )

    def __init__(self) -> None:
        self.n = 0
        self._warm: list[float] = []
        self._sustain: deque[tuple[float, float]] = deque(maxlen=SUSTAIN_STEPS)
        self.base = math.nan
        self.spread = MIN_SPREAD
        self.loss_ref = math.nan
        self.last_lg = math.nan
        self.last_ll = math.nan
        self.last_lu = math.nan
        self.last_step = -1
        self.run_len = 0
        self.run_max_inc = 0.0
        self.run_start_lg = math.nan
        self.run_start_ll = math.nan
        self.run_start_lu = math.nan
        self.run_start_step = 0

    @property
    def upper(self) -> float:
        """Upper edge of the normal band (log scale)."""
        return self.base + max(3.0 * self.spread, BAND_MIN)

    def update(self, step: int, lg: float, ll: float, lu: float) -> None:
        """Feed one finite step: log global norm ``lg``, log loss ``ll``, log update norm ``lu``."""
        if self.n > 0 and lg > self.last_lg:
            if self.run_len == 0:
                self.run_start_lg, self.run_start_ll = self.last_lg, self.last_ll
                self.run_start_lu = self.last_lu
                self.run_start_step = self.last_step
                self.run_max_inc = 0.0
            self.run_len += 1
            self.run_max_inc = max(self.run_max_inc, lg - self.last_lg)
        else:
            self.run_len = 0
        if self.n < WARMUP:
            self._warm.append(lg)
            w = sorted(self._warm)
            self.base = w[len(w) // 2] if len(w) % 2 else 0.5 * (w[len(w) // 2 - 1] + w[len(w) // 2])
            dev = sorted(abs(v - self.base) for v in w)
            mad = 1.4826 * dev[len(dev) // 2] if len(w) >= 3 else MIN_SPREAD
            self.spread = min(MAX_SPREAD, max(MIN_SPREAD, mad))
            # the initial loss level: the largest of the first steps' (robust to a lucky batch)
            if not self.loss_ref >= ll:
                self.loss_ref = ll
        else:
            d = lg - self.base
            if d <= self.upper - self.base:  # inside the band or below: track drift
                lim = 2.0 * self.spread
                self.base += ALPHA * max(-lim, min(lim, d))
                self.spread += ALPHA * (min(abs(d), 3.0 * self.spread) - self.spread)
                self.spread = min(MAX_SPREAD, max(self.spread, MIN_SPREAD))
        self._sustain.append((lg, ll))
        self.n += 1
        self.last_lg, self.last_ll, self.last_lu, self.last_step = lg, ll, lu, step

    def _growth(self) -> float:
        """Log growth of the current run; once the baseline is established, counted from it
        when the run started below it (climbing back from a low point is noise, not growth)."""
        start = self.run_start_lg if self.n <= WARMUP else max(self.run_start_lg, self.base)
        return self.last_lg - start

    def runaway(self) -> bool:
        """Rule 2: consecutive growth out of the band, with the loss rising alongside and the
        updates growing with the gradient."""
        growth = self._growth()
        rise = self.last_ll - self.run_start_ll
        if growth - self.run_max_inc < RUN_GROWTH:
            return False
        if self.run_len >= MIN_RUN and rise >= LOSS_RISE:
            pass
        elif not (self.run_len >= 2 and growth >= FAST_GROWTH and rise >= FAST_GROWTH):
            return False
        feedback = self.last_lu - self.run_start_lu
        return (
            self.last_lg > self.upper
            and self.last_lg - self.base >= RUN_GROWTH
            and not feedback < FEEDBACK * growth  # NaN (no update recorded) does not block
        )

    def sustained(self) -> bool:
        """Rule 3: far above baseline, with a loss far above its initial level, for a while."""
        if len(self._sustain) < SUSTAIN_STEPS or self.n <= WARMUP:
            return False
        return all(lg - self.base >= SUSTAINED and ll - self.loss_ref >= SUSTAINED_LOSS
                   for lg, ll in self._sustain)

    def growing(self) -> bool:
        """Growth worth a warning: a run of increases out of the band (loss not yet rising)."""
        growth = self._growth()
        return (self.run_len >= MIN_RUN and growth - self.run_max_inc >= RUN_GROWTH
                and self.last_lg > self.upper)


def _first_non_finite(record: StepRecord) -> tuple[int | None, TensorKind, str, list[int]] | None:
    """(layer, tensor, 'nan'|'inf', layers) of the first non-finite value in computation order."""
    layers = record.layers
    bad = [lr.layer for lr in layers
           if (lr.act_mean is not None and not math.isfinite(lr.act_mean))
           or (lr.act_std is not None and not math.isfinite(lr.act_std))]
    if bad:
        lr0 = layers[bad[0]] if bad[0] < len(layers) else layers[0]
        v = lr0.act_mean if lr0.act_mean is not None and not math.isfinite(lr0.act_mean) else lr0.act_std
        return bad[0], "activation", _kind(v), bad
    if not math.isfinite(record.loss):
        return None, "loss", _kind(record.loss), []
    bad = [lr.layer for lr in layers if not math.isfinite(lr.grad_norm)]
    if bad:
        v = layers[bad[-1]].grad_norm if bad[-1] < len(layers) else math.nan
        return bad[-1], "gradient", _kind(v), bad
    if not math.isfinite(record.grad_norm):
        return None, "gradient", _kind(record.grad_norm), []
    bad = [lr.layer for lr in layers if not math.isfinite(lr.weight_norm)]
    if bad:
        return bad[0], "weight", _kind(layers[bad[0]].weight_norm), bad
    bad = [lr.layer for lr in layers if not math.isfinite(lr.update_norm)]
    if bad:
        return bad[0], "update", _kind(layers[bad[0]].update_norm), bad
    return None


def _kind(v: float | None) -> str:
    return "nan" if v is None or v != v else "inf"


class Monitor:
    """Online explosion detector; the trainer calls :meth:`observe` after every step.

    ``explosion_confirmed`` turns True (and stays) once runaway growth or a non-finite value
    is seen; ``confirmed_at`` is that step. :meth:`observe` returns the findings that became
    true at this step (at most one of each kind per run), for the sink's live alerts.
    """

    def __init__(self, spec: TrainingSpec) -> None:
        self.spec = spec
        self.state = MonitorState()
        self.forecaster = OverflowForecaster(spec)
        self.explosion_confirmed = False
        self.confirmed_at: int | None = None
        self.alerts: list[Finding] = []
        self._warned_growth = False
        self._non_finite_seen = False
        # overshoot: (step, log loss) of the record before the last update that rewrote weights
        self._prev_ll = math.nan
        self._rewrite_from_ll = math.nan
        self._rewrite_from_step = -1
        self._rewrite_weights: list[float] = []
        self._prev_weights: list[float] = []
        self._overshoot: tuple[int, float, float] | None = None

    def observe(self, record: StepRecord) -> list[Finding]:
        """Feed one step; returns the alerts this step raised (usually none)."""
        if self._non_finite_seen:
            return []
        nf = None
        if not (math.isfinite(record.loss) and math.isfinite(record.grad_norm)):
            nf = _first_non_finite(record) or (None, "loss", _kind(record.loss), [])
        else:
            for lr in record.layers:  # cheap scan for a non-finite weight/update/activation
                if not (math.isfinite(lr.weight_norm) and math.isfinite(lr.update_norm)
                        and math.isfinite(lr.grad_norm)
                        and (lr.act_std is None or math.isfinite(lr.act_std))):
                    nf = _first_non_finite(record)
                    break
        if nf is not None:
            return self._non_finite(record, *nf)

        st = self.state
        lg = safe_log(record.grad_norm)
        ll = safe_log(record.loss)
        usq = 0.0
        for lr in record.layers:
            usq += lr.update_norm * lr.update_norm
        lu = 0.5 * safe_log(usq) if record.layers else math.nan
        st.update(record.step, lg, ll, lu)
        self._track_overshoot(record, ll)
        self.forecaster.update(record, lg, st.run_len > 0)
        if self.explosion_confirmed:
            return []
        new: list[Finding] = []
        runaway = st.runaway()
        rule = ("runaway" if runaway else "sustained" if st.sustained()
                else "overshoot" if self._overshoot is not None else None)
        if rule is not None:
            self.explosion_confirmed = True
            self.confirmed_at = record.step
            new.append(self._explosion_finding(record, rule))
        elif not self._warned_growth and st.growing():
            self._warned_growth = True
            new.append(self._growth_warning(record))
        self.alerts.extend(new)
        return new

    def _track_overshoot(self, record: StepRecord, ll: float) -> None:
        """Rule 4 state: consecutive weight-rewriting updates and the loss before them."""
        rewrite = 0.0
        for lr in record.layers:
            if lr.weight_norm > 0:
                r = lr.update_norm / lr.weight_norm
                if r > rewrite:
                    rewrite = r
        if rewrite >= REWRITE:
            if self._rewrite_from_step < 0:
                # the loss before the first rewriting update (this record's loss was computed
                # before its update, so it is "before"), and each layer's weights before it
                self._rewrite_from_step = record.step
                self._rewrite_from_ll = ll
                self._rewrite_weights = self._prev_weights or [
                    max(lr.weight_norm - lr.update_norm, 0.0) for lr in record.layers]
            elif (record.step > self._rewrite_from_step
                  and ll - self._rewrite_from_ll >= OVERSHOOT_LOSS
                  and any(lr.weight_norm >= 2.0 * w0 > 0
                          for lr, w0 in zip(record.layers, self._rewrite_weights, strict=False))):
                self._overshoot = (self._rewrite_from_step, self._rewrite_from_ll, ll)
        else:
            self._rewrite_from_step = -1
        self._prev_ll = ll
        self._prev_weights = [lr.weight_norm for lr in record.layers]

    # ---------------------------------------------------------------- findings
    def _non_finite(self, record: StepRecord, layer: int | None, tensor: TensorKind,
                    value: str, layers: list[int]) -> list[Finding]:
        self._non_finite_seen = True
        what = "NaN" if value == "nan" else "Inf"
        where = "the loss" if layer is None else f"layer {layer}'s {tensor}"
        finding = Finding(
            kind="non_finite", severity="critical", step=record.step,
            layers=layers or ([] if layer is None else [layer]),
            evidence={"tensor": tensor, "value": value, "layer": layer,
                      "loss": record.loss, "grad_norm": record.grad_norm,
                      "baseline_grad_norm": _exp(self.state.base)},
            message=f"First {what} at step {record.step} in {where}: the computation "
                    f"overflowed and nothing after it is meaningful.",
        )
        new = [finding]
        if not self.explosion_confirmed:
            self.explosion_confirmed = True
            self.confirmed_at = record.step
        self.alerts.extend(new)
        return new

    def _explosion_finding(self, record: StepRecord, rule: str) -> Finding:
        st = self.state
        fc = self.forecaster.forecast(record.step)
        if rule == "overshoot" and self._overshoot is not None:
            start, ll0, _ll1 = self._overshoot
            return Finding(
                kind="gradient_explosion", severity="critical", step=record.step,
                layers=_growing_layers(record),
                evidence={"rule": rule, "growth_started_at": start,
                          "loss_before": _exp(ll0), "loss": record.loss,
                          "grad_norm": record.grad_norm,
                          "baseline_grad_norm": _exp(st.base),
                          "steps_to_overflow": fc.steps_to_overflow if fc else None,
                          "predicted_overflow_step": fc.predicted_overflow_step if fc else None},
                message=(f"Since step {start} every update has changed the weights by at least "
                         f"{REWRITE:g} of their norm and the loss went from {_exp(ll0):.3g} to "
                         f"{record.loss:.3g}: the gradient is too large for the weights and "
                         "each step throws the network further." + (f" {fc.message}" if fc else "")),
            )
        span = max(1, record.step - st.run_start_step)
        growth = math.exp((st.last_lg - st.run_start_lg) / span) if rule == "runaway" else None
        evidence: dict[str, float | int | str | None] = {
            "rule": rule,
            "baseline_grad_norm": _exp(st.base),
            "grad_norm": record.grad_norm,
            "ratio_to_baseline": _exp(st.last_lg - st.base),
            "growth_per_step": growth,
            "growth_started_at": st.run_start_step if rule == "runaway" else None,
            "loss": record.loss,
            "loss_at_growth_start": _exp(st.run_start_ll) if rule == "runaway" else None,
            "steps_to_overflow": fc.steps_to_overflow if fc else None,
            "predicted_overflow_step": fc.predicted_overflow_step if fc else None,
        }
        if rule == "runaway":
            msg = (f"Gradient norm grew {_exp(st.last_lg - st.run_start_lg):.3g}x in "
                   f"{record.step - st.run_start_step} steps (x{growth:.3g}/step) to "
                   f"{record.grad_norm:.3g}, {_exp(st.last_lg - st.base):.3g}x its baseline, "
                   f"while the loss rose {_exp(st.last_ll - st.run_start_ll):.3g}x: runaway growth.")
        else:
            msg = (f"Gradient norm has stayed over {math.exp(SUSTAINED):.0f}x its baseline "
                   f"({_exp(st.base):.3g}) with the loss over "
                   f"{math.exp(SUSTAINED_LOSS):.0f}x its initial level for "
                   f"{SUSTAIN_STEPS} steps.")
        if fc is not None:
            msg += f" {fc.message}"
        return Finding(kind="gradient_explosion", severity="critical", step=record.step,
                       layers=_growing_layers(record), evidence=evidence, message=msg)

    def _growth_warning(self, record: StepRecord) -> Finding:
        st = self.state
        fc = self.forecaster.forecast(record.step)
        msg = (f"Gradient norm grew {_exp(st.last_lg - st.run_start_lg):.3g}x over "
               f"{record.step - st.run_start_step} steps to {record.grad_norm:.3g} "
               f"({_exp(st.last_lg - st.base):.3g}x baseline); the loss is not rising (yet).")
        if fc is not None:
            msg += f" {fc.message}"
        return Finding(
            kind="gradient_growth", severity="warning", step=record.step,
            layers=_growing_layers(record),
            evidence={"baseline_grad_norm": _exp(st.base), "grad_norm": record.grad_norm,
                      "growth_started_at": st.run_start_step,
                      "steps_to_overflow": fc.steps_to_overflow if fc else None},
            message=msg,
        )


def _growing_layers(record: StepRecord) -> list[int]:
    """Layers holding most of the gradient: those above half the largest layer norm."""
    norms = [lr.grad_norm for lr in record.layers]
    if not norms:
        return []
    top = max(norms)
    return [lr.layer for lr in record.layers if lr.grad_norm >= 0.5 * top]


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
