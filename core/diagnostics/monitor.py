"""The online monitor: fed every step by the trainer, it confirms an explosion — and only that.

Per step it does O(layers) scalar work on running state (no scan of the history), so it can
watch every step of a fast run. A confirmation stops the run by default
(``monitor.stop_on_explosion``), so it must never fire on a run that would have recovered:
an overnight run killed by a false alarm is worse than no guard rail.

The quantities it keeps (each defined here once; reports quote them under these names):

- ``baseline_grad_norm`` (B): the run's *current* typical global gradient norm — the median of
  the first ``WARMUP`` records, then a Huber-clipped exponential moving average of the log norm
  (weight ``ALPHA``, time constant ~20 records) that a spike cannot drag along. With a robust
  spread of the log norm it defines the *normal band*, ``B * exp(max(3 * spread, log 2))``,
  used to delimit spikes.
- ``healthy_grad_norm`` (H): the largest baseline the run has trained at so far (B's running
  maximum). A run that converges lowers B by orders of magnitude; H keeps the scale of its
  healthy regime, so late gradient noise of a converged net is never measured against its
  quietest stretch.
- ``initial_loss`` (L0): the median loss of the first ``WARMUP`` records.
- ``best_loss`` (L*): the lowest value so far of the loss's moving average (geometric: an
  exponential moving average of the log loss with weight ``ALPHA``, so that one outlier batch
  moves it by a factor, not by its size).
- ``loss_harm``: ``(loss - L*) / (L0 - L*)``, the share of the run's progress the current loss
  has undone (>= 1: back at or above where it started). A loss is *harmed* when it has undone
  at least ``HARM`` of the progress and is at least twice L* (a wobble at 1e-6 is not harm).

Explosion is *confirmed* (``explosion_confirmed``) on evidence that matters, never on relative
growth alone:

1. **non-finite**: a NaN/Inf loss, gradient, weight, update or activation; or
2. **overflow course**: the norm reached ``sqrt`` of the dtype's overflow limit (it is on its
   way to overflow whatever the loss does); or
3. **runaway**: while the loss is harmed, the norm is at least ``RUNAWAY`` times H (an order of
   magnitude above anything the run trained at) for ``PERSIST + 1`` consecutive records, or
   ``RUNAWAY**2`` times H (two orders) for ``PERSIST``, and the weight updates grew along (at
   least ``FEEDBACK`` as fast in log terms, against their own healthy scale): big gradient ->
   big step -> steeper region -> bigger gradient. When clipping or an adaptive optimizer
   bounds the step, the pre-clip norm can grow without that loop; such a run is stopped by
   rules 1 or 2 if it really overflows; or
4. **overshoot**: consecutive updates each changed some layer's weights by at least
   ``REWRITE`` of their norm, that layer's weights have at least doubled since (the steps feed
   on themselves), and the loss is ``OVERSHOOT_LOSS`` times the loss before them — the
   explosion mechanism itself, seen from step 0 before any baseline exists.

Two transient events raise a *warning* alert once per run (kept with the alert steps when a
long history is thinned, so every path sees them): a **setback** — the median of the last
``RECENT`` losses harmed (at least half-way back from L* to L0, and twice L*) — and a **catapult** — the loss
at least ``CATAPULT_JUMP`` times the first loss for three records from step 1 or 2, then back
below the first loss.

A run that loses what it learned without a large gradient (a ReLU classifier wrecked by a
rate far too high) is not stopped: whether a long setback recovers is only known later, so
the setback warning reports it and the final diagnosis judges it (``lost_progress``).

What these leave out recovers by itself and is reported, not stopped: a single outlier batch
(one record), a catapult (the loss jumps early, the norm a few times H, then both come back),
edge-of-stability oscillation, Adam's late spikes on a converged net (the norm jumps from
1e-6 toward, not past, its healthy scale). While growth is underway the monitor forecasts the
steps left until float overflow (see :mod:`core.diagnostics.forecast`).

Its thresholds and running state (:class:`MonitorState`) live in
:mod:`core.diagnostics.monitor_state`, what it reads off a record's layers outside its per-step
pass in :mod:`core.diagnostics.record_scan`; both are re-exported here.
"""

from __future__ import annotations

import math

from core.diagnostics.forecast import OverflowForecaster, overflow_limit
from core.diagnostics.monitor_state import (
    ALPHA,
    BAND_MIN,
    CATAPULT_JUMP,
    CATAPULT_WINDOW,
    FEEDBACK,
    HARM,
    MAX_SPREAD,
    MIN_RUN,
    MIN_SPREAD,
    OVERSHOOT_LOSS,
    PERSIST,
    RECENT,
    REWRITE,
    RUN_GROWTH,
    RUNAWAY,
    WARMUP,
    MonitorState,
    exp_or_inf,
)
from core.diagnostics.record_scan import first_non_finite, growing_layers, layer_figures, nan_or_inf
from core.diagnostics.report import Finding, fmt
from core.diagnostics.series import LOG_OF_ZERO
from core.spec import TrainingSpec
from core.telemetry import StepRecord, TensorKind

__all__ = [
    "ALPHA",
    "BAND_MIN",
    "CATAPULT_JUMP",
    "CATAPULT_WINDOW",
    "FEEDBACK",
    "HARM",
    "MAX_SPREAD",
    "MIN_RUN",
    "MIN_SPREAD",
    "OVERSHOOT_LOSS",
    "PERSIST",
    "RECENT",
    "REWRITE",
    "RUNAWAY",
    "RUN_GROWTH",
    "WARMUP",
    "Monitor",
    "MonitorState",
]


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
        self._log_limit = math.log(overflow_limit(spec.dtype))
        self.explosion_confirmed = False
        self.confirmed_at: int | None = None
        self.alerts: list[Finding] = []
        self._warned_growth = False
        self._setback_seen = False
        self._catapult: list[float] = []  # first loss, first norm, high streak, peak loss, step
        self._catapult_seen = False
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
        loss, layers = record.loss, record.layers
        if not (math.isfinite(loss) and math.isfinite(record.grad_norm)):
            nf = first_non_finite(record) or (None, "loss", nan_or_inf(loss), [])
            return self._non_finite(record, *nf)
        # one pass over the layers: the scan for a non-finite weight/update/gradient/activation,
        # the update's squared norm, the largest update-to-weight ratio (rule 4), the weights,
        # the largest activation std (the forecast)
        usq = 0.0
        rewrite = 0.0
        act = 0.0
        weights: list[float] = []
        for lr in layers:
            w, u, a = lr.weight_norm, lr.update_norm, lr.act_std
            if not (math.isfinite(w) and math.isfinite(u) and math.isfinite(lr.grad_norm)
                    and (a is None or math.isfinite(a))):
                found = first_non_finite(record)
                if found is not None:
                    return self._non_finite(record, *found)
                usq, rewrite, act, weights = layer_figures(layers)
                break
            usq += u * u
            if w > 0:
                r = u / w
                if r > rewrite:
                    rewrite = r
            if a is not None and a > act:
                act = a
            weights.append(w)

        g = record.grad_norm  # safe_log, written out (three times a step)
        lg = math.log(g) if g > 0.0 else LOG_OF_ZERO if g == 0.0 else math.nan
        ll = math.log(loss) if loss > 0.0 else LOG_OF_ZERO if loss == 0.0 else math.nan
        lu = (0.5 * (math.log(usq) if usq > 0.0 else LOG_OF_ZERO if usq == 0.0 else math.nan)
              if layers else math.nan)
        self.advance(record, lg, ll, lu, rewrite, act, weights)
        return self.judge(record)

    @property
    def non_finite_seen(self) -> bool:
        """A non-finite value was seen: :meth:`observe` ignores every later record."""
        return self._non_finite_seen

    def advance(self, record: StepRecord, lg: float, ll: float, lu: float, rewrite: float,
                act: float, weights: list[float]) -> None:
        """The state update of :meth:`observe` for a finite ``record`` whose figures the caller
        computed as :meth:`observe` does: the logs of its global norm, its loss and its whole
        update's norm, its largest update-to-weight ratio (0 if none), its largest activation
        std (0 if none) and its layers' weight norms. :meth:`judge` (or, when :meth:`quiet`,
        nothing) must follow."""
        st = self.state
        st.update(record.step, lg, ll, record.loss, lu)
        self._track_overshoot(record, ll, rewrite, weights)
        self.forecaster.update(record, lg, st.run_len > 0, act, ll)

    def quiet(self) -> bool:
        """After :meth:`advance`: :meth:`judge` would raise no alert and change nothing (no
        rule holds, no growth warning, setback or catapult is within reach)."""
        if self.explosion_confirmed:
            return True
        st = self.state
        n = st.n
        return not (st.last_lg >= 0.5 * self._log_limit  # overflow_course()
                    or ((st._persist_run >= PERSIST + 1 or st._persist_far >= PERSIST)
                        and n > 1)  # runaway()
                    or self._overshoot is not None
                    or (not self._warned_growth and st.run_len >= MIN_RUN)
                    or (not self._catapult_seen and n <= CATAPULT_WINDOW)
                    or (not self._setback_seen and n > WARMUP + RECENT
                        and st.setback_possible()))

    def judge(self, record: StepRecord) -> list[Finding]:
        """After :meth:`advance`: the rules, warnings and transients at ``record``; the alerts
        it raised (what :meth:`observe` returns)."""
        st = self.state
        if self.explosion_confirmed:
            return []
        new: list[Finding] = []
        rule = ("overflow_course" if st.overflow_course(self._log_limit)
                else "runaway" if st.runaway()
                else "overshoot" if self._overshoot is not None else None)
        if rule is not None:
            self.explosion_confirmed = True
            self.confirmed_at = record.step
            new.append(self._explosion_finding(record, rule))
        elif not self._warned_growth and st.run_len >= MIN_RUN and st.growing():
            self._warned_growth = True
            new.append(self._growth_warning(record))
        if rule is None and ((not self._setback_seen and st.n > WARMUP + RECENT)
                             or (not self._catapult_seen and st.n <= CATAPULT_WINDOW)):
            new += self._transients(record)
        self.alerts.extend(new)
        return new

    def _transients(self, record: StepRecord) -> list[Finding]:
        """The setback and catapult warnings (see the module doc), each once per run."""
        st = self.state
        out: list[Finding] = []
        if not self._setback_seen and st.n > WARMUP + RECENT and st.setback():
            self._setback_seen = True
            ev = self.evidence(record)
            adaptive = self.spec.optimizer.name in ("adam", "adamw", "rmsprop")
            mech = ("adam_second_moment" if adaptive and st.healthy - st.base >= math.log(100.0)
                    else "unknown")
            ev.update({"mechanism": mech, "recent_median_loss": st.recent_median()})
            # the setback started at the first harmed loss of the window
            level = max(2.0 * st.best_loss,
                        st.best_loss + HARM * max(st.initial_loss - st.best_loss, 0.0))
            start = next((k for k, v in zip(st.recent_steps, st.recent, strict=True)
                          if v >= level), record.step)
            ev["setback_confirmed_at"] = record.step
            out.append(Finding(
                kind="gradient_spike", severity="warning", step=start, layers=[],
                evidence=ev,
                message=(f"Setback from step {start} (seen at step {record.step}): the median "
                         f"of the last {RECENT} losses, "
                         f"{fmt(ev['recent_median_loss'])}, is back above half-way between the "
                         f"best {fmt(ev['best_loss'])} and the initial loss "
                         f"{fmt(ev['initial_loss'])} (at least twice the best).")))
        if not self._catapult_seen and st.n <= CATAPULT_WINDOW:
            c = self._catapult
            if not c:
                c += [record.loss, record.grad_norm, 0.0, 0.0, -1.0]
            elif record.loss >= CATAPULT_JUMP * c[0] and (c[2] > 0 or st.n <= 3):
                c[2] += 1
                if record.loss > c[3]:
                    c[3], c[4] = record.loss, float(record.step)
            elif c[2] >= 3 and record.loss < c[0]:
                self._catapult_seen = True
                out.append(Finding(
                    kind="gradient_spike", severity="warning", step=1, layers=[],
                    evidence={"mechanism": "catapult", "first_loss": c[0],
                              "peak_loss": c[3], "peak_step": int(c[4]),
                              "loss_jump": c[3] / c[0], "recovered_step": record.step},
                    message=(f"The loss jumped {fmt(c[3] / c[0])}x from {fmt(c[0])} to "
                             f"{fmt(c[3])} at step {int(c[4])} and was back below where it "
                             f"started at step {record.step}: the catapult phase.")))
            elif c[2] < 3:
                c[2] = 0.0
        return out

    def _track_overshoot(self, record: StepRecord, ll: float, rewrite: float,
                         weights: list[float]) -> None:
        """Rule 4 state: consecutive weight-rewriting updates and the loss before them
        (``rewrite``: the record's largest update-to-weight ratio, 0 if none; ``weights``: its
        layers' weight norms)."""
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
        self._prev_weights = weights

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
                      **self.evidence(record)},
            message=f"First {what} at step {record.step} in {where}: the computation "
                    f"overflowed and nothing after it is meaningful.",
        )
        new = [finding]
        if not self.explosion_confirmed:
            self.explosion_confirmed = True
            self.confirmed_at = record.step
        self.alerts.extend(new)
        return new

    def evidence(self, record: StepRecord) -> dict[str, float | int | str | None]:
        """The monitor's quantities at ``record`` (names as defined in the module doc)."""
        st = self.state
        return {
            "grad_norm": record.grad_norm,
            "baseline_grad_norm": exp_or_inf(st.base),
            "healthy_grad_norm": exp_or_inf(st.healthy),
            "ratio_to_healthy": _ratio(record.grad_norm, exp_or_inf(st.healthy)),
            "loss": record.loss,
            "initial_loss": st.initial_loss,
            "best_loss": st.best_loss,
            "loss_harm": st.loss_harm(),
        }

    def _explosion_finding(self, record: StepRecord, rule: str) -> Finding:
        st = self.state
        fc = self.forecaster.forecast(record.step)
        ev = self.evidence(record)
        ev.update({"rule": rule,
                   "steps_to_overflow": fc.steps_to_overflow if fc else None,
                   "predicted_overflow_step": fc.predicted_overflow_step if fc else None})
        g, h = fmt(record.grad_norm), fmt(ev["healthy_grad_norm"])
        harm = (f"the loss {fmt(record.loss)} has undone {fmt(ev['loss_harm'])} of the progress "
                f"from {fmt(ev['initial_loss'])} to {fmt(ev['best_loss'])}")
        if rule == "overshoot" and self._overshoot is not None:
            start, ll0, _ll1 = self._overshoot
            ev.update({"growth_started_at": start, "loss_before": exp_or_inf(ll0)})
            msg = (f"Since step {start} every update has changed the weights by at least "
                   f"{fmt(REWRITE)} of their norm and the loss went from {fmt(exp_or_inf(ll0))} to "
                   f"{fmt(record.loss)}: the gradient is too large for the weights and each step "
                   "throws the network further.")
        elif rule == "overflow_course":
            msg = (f"The gradient norm reached {g}, past the square root of the {self.spec.dtype} "
                   f"overflow limit ({fmt(math.exp(0.5 * self._log_limit))}): it is on course to "
                   "overflow.")
        elif rule == "runaway":
            ev["growth_started_at"] = st.run_start_step if st.run_len else record.step
            msg = (f"The gradient norm {g} is {fmt(ev['ratio_to_healthy'])}x the run's healthy "
                   f"scale {h}, far above it for {st.persist()} consecutive steps, and {harm}: "
                   "runaway growth.")
        if fc is not None:
            msg += f" {fc.message}"
        return Finding(kind="gradient_explosion", severity="critical", step=record.step,
                       layers=growing_layers(record), evidence=ev, message=msg)

    def _growth_warning(self, record: StepRecord) -> Finding:
        st = self.state
        fc = self.forecaster.forecast(record.step)
        ev = self.evidence(record)
        ev.update({"growth_started_at": st.run_start_step,
                   "steps_to_overflow": fc.steps_to_overflow if fc else None})
        msg = (f"The gradient norm grew {fmt(exp_or_inf(st.last_lg - st.run_start_lg))}x since step "
               f"{st.run_start_step} to {fmt(record.grad_norm)}, "
               f"{fmt(ev['ratio_to_healthy'])}x the run's healthy scale "
               f"{fmt(ev['healthy_grad_norm'])}; not an explosion unless the loss is harmed.")
        if fc is not None:
            msg += f" {fc.message}"
        return Finding(kind="gradient_growth", severity="warning", step=record.step,
                       layers=growing_layers(record), evidence=ev, message=msg)


def _ratio(a: float | int | str | None, b: float | int | str | None) -> float:
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return math.nan
    return a / b if b > 0 else math.inf
