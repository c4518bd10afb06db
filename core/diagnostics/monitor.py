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
"""

from __future__ import annotations

import math
from collections import deque

from core.diagnostics.forecast import OverflowForecaster, overflow_limit
from core.diagnostics.report import Finding, fmt
from core.spec import TrainingSpec
from core.telemetry import LayerRecord, StepRecord, TensorKind

__all__ = ["Monitor", "MonitorState"]

WARMUP = 5
ALPHA = 0.05  # EMA weight of the baseline once warmed up (time constant ~20 records)
MIN_SPREAD = math.log(1.25)
MAX_SPREAD = math.log(2.0)  # a "normal band" wider than x8 (3 spreads) would not be one
BAND_MIN = math.log(2.0)
MIN_RUN = 3  # consecutive increases that make a growth warning
RUN_GROWTH = math.log(4.0)
FEEDBACK = 0.5
RUNAWAY = math.log(10.0)  # rule 3: an order of magnitude above the healthy scale H
PERSIST = 2  # rules 3 and 4: a condition must hold on consecutive records (not one batch)
HARM = 0.5  # share of the progress a harmed loss has undone
RECENT = 21  # losses whose median is "the loss now" (an outlier batch cannot move it)
REWRITE = 0.5
CATAPULT_JUMP = 2.0
CATAPULT_WINDOW = 50  # records in which a catapult can start and come back
OVERSHOOT_LOSS = math.log(10.0)


class MonitorState:
    """Running baseline B, healthy scale H, normal band, loss levels and growth run."""

    __slots__ = (
        "_loss_lavg",
        "_persist_far",
        "_persist_run",
        "_warm",
        "_warm_loss",
        "base",
        "best_loss",
        "healthy",
        "last_lg",
        "last_ll",
        "last_step",
        "loss",
        "loss_avg",
        "loss_ref",
        "n",
        "recent",
        "recent_steps",
        "run_len",
        "run_max_inc",
        "run_start_lg",
        "run_start_ll",
        "run_start_step",
        "spread",
        "ubase",
        "uhealthy",
    )

    def __init__(self) -> None:
        self.n = 0
        self._warm: list[float] = []
        self._warm_loss: list[float] = []
        self.base = math.nan
        self.healthy = math.nan
        self.spread = MIN_SPREAD
        self.loss_ref = math.nan  # log L0
        self.loss = math.nan  # the current loss (linear)
        self.loss_avg = math.nan  # geometric moving average of the loss
        self._loss_lavg = math.nan
        self.best_loss = math.inf  # L* (linear)
        self.last_lg = math.nan
        self.last_ll = math.nan
        self.last_step = -1
        self.run_len = 0
        self.run_max_inc = 0.0
        self.run_start_lg = math.nan
        self.run_start_ll = math.nan
        self.run_start_step = 0
        self.ubase = math.nan
        self.uhealthy = math.nan
        self.recent: deque[float] = deque(maxlen=RECENT)

        self.recent_steps: deque[int] = deque(maxlen=RECENT)
        self._persist_run = 0
        self._persist_far = 0

    @property
    def upper(self) -> float:
        """Upper edge of the normal band (log scale)."""
        w = 3.0 * self.spread
        return self.base + (BAND_MIN if w < BAND_MIN else w)  # max(3 spread, BAND_MIN)

    @property
    def initial_loss(self) -> float:
        return _exp(self.loss_ref)

    def loss_harm(self) -> float:
        """Share of the progress (L0 - L*) the current loss has undone (see the module doc)."""
        l0, best = _exp(self.loss_ref), self.best_loss
        progress = l0 - best
        if not progress > 0:
            return math.inf if self.loss > l0 else 0.0
        return (self.loss - best) / progress

    def harmed(self) -> bool:
        return self.loss_harm() >= HARM and self.loss >= 2.0 * self.best_loss

    def update(self, step: int, lg: float, ll: float, loss: float, lu: float = math.nan) -> None:
        """Feed one finite step: log global norm ``lg``, log loss ``ll``, the loss and the log
        norm ``lu`` of the whole weight update (NaN when not recorded)."""
        # (runs on every step of every run: the state is read into locals once, and each
        # expression is the one the docstrings define, in the same order of operations)
        n = self.n
        last_lg = self.last_lg
        if n > 0 and lg > last_lg:
            if self.run_len == 0:
                self.run_start_lg, self.run_start_ll = last_lg, self.last_ll
                self.run_start_step = self.last_step
                self.run_max_inc = 0.0
            self.run_len += 1
            inc = lg - last_lg
            if inc > self.run_max_inc:  # max(run_max_inc, inc)
                self.run_max_inc = inc
        else:
            self.run_len = 0
        if n < WARMUP:
            self._warm.append(lg)
            w = sorted(self._warm)
            self.base = w[len(w) // 2] if len(w) % 2 else 0.5 * (w[len(w) // 2 - 1] + w[len(w) // 2])
            dev = sorted(abs(v - self.base) for v in w)
            mad = 1.4826 * dev[len(dev) // 2] if len(w) >= 3 else MIN_SPREAD
            self.spread = min(MAX_SPREAD, max(MIN_SPREAD, mad))
            # L0: the median loss of the first records (one lucky or unlucky batch cannot set it)
            self._warm_loss.append(ll)
            wl = sorted(self._warm_loss)
            self.loss_ref = wl[(len(wl) - 1) // 2]
            # H starts at the first record's norm: the warm-up median may already contain the
            # growth of a run that explodes from step 0
            if self.healthy != self.healthy:
                self.healthy = lg
            base, spread = self.base, self.spread
        else:
            # (max(a, b) written out as ``b if b > a else a``, min(a, b) as ``b if b < a else
            # a``: the builtins' results, NaN included, without their call)
            base, spread = self.base, self.spread
            d = lg - base
            w3 = 3.0 * spread
            if d <= (base + (BAND_MIN if w3 < BAND_MIN else w3)) - base:  # in the band or below
                lim = 2.0 * spread
                c = d if d < lim else lim  # min(lim, d)
                base += ALPHA * (c if c > -lim else -lim)  # max(-lim, min(lim, d))
                a = abs(d)
                spread += ALPHA * ((w3 if w3 < a else a) - spread)  # min(|d|, 3 spread)
                spread = MIN_SPREAD if spread < MIN_SPREAD else spread
                spread = spread if spread < MAX_SPREAD else MAX_SPREAD
                self.base, self.spread = base, spread
            if base > self.healthy:
                self.healthy = base
        w3 = 3.0 * spread
        upper = base + (BAND_MIN if w3 < BAND_MIN else w3)
        if n < WARMUP or lg <= upper:
            # the update's own healthy scale, tracked on the records the baseline tracks
            ubase = self.ubase
            ubase = lu if ubase != ubase else ubase + ALPHA * (lu - ubase)
            self.ubase = ubase
            if not self.uhealthy >= ubase:
                self.uhealthy = ubase
        self.loss = loss
        self.recent.append(loss)
        self.recent_steps.append(step)
        # geometric moving average: one outlier batch moves it by a factor, not by its size
        lavg = ll if n == 0 else self._loss_lavg + ALPHA * (ll - self._loss_lavg)
        self._loss_lavg = lavg
        loss_avg = _exp(lavg)
        self.loss_avg = loss_avg
        l0 = _exp(self.loss_ref)
        if n >= WARMUP:
            if loss_avg < self.best_loss:
                self.best_loss = loss_avg
        else:
            self.best_loss = min(self.best_loss, l0)
        self.n = n + 1
        self.last_lg, self.last_ll, self.last_step = lg, ll, step
        # harmed() (loss_harm() >= HARM and loss >= 2 L*), written out
        best = self.best_loss
        progress = l0 - best
        harm = (loss - best) / progress if progress > 0 else (math.inf if loss > l0 else 0.0)
        harmed = harm >= HARM and loss >= 2.0 * best
        healthy = self.healthy
        feeds = not (lu - self.uhealthy < FEEDBACK * (lg - healthy))  # NaN: no veto
        far = lg - healthy >= RUNAWAY and lg > upper and feeds
        self._persist_run = self._persist_run + 1 if far and harmed else 0
        very_far = far and lg - healthy >= 2.0 * RUNAWAY
        self._persist_far = self._persist_far + 1 if very_far and harmed else 0

    def overflow_course(self, limit: float) -> bool:
        """Rule 2: the norm reached the square root of the overflow limit (log ``limit``)."""
        return self.last_lg >= 0.5 * limit

    def runaway(self) -> bool:
        """Rule 3: an order of magnitude above H for PERSIST + 1 records (two for PERSIST),
        the loss harmed."""
        return (self._persist_run >= PERSIST + 1 or self._persist_far >= PERSIST) and self.n > 1

    def _setback_levels(self) -> tuple[float, float]:
        best, l0 = self.best_loss, _exp(self.loss_ref)
        return 2.0 * best, best + HARM * max(l0 - best, 0.0)

    def setback_possible(self) -> bool:
        """False when :meth:`setback` is surely False: the largest of the last losses is below
        a level (the median is at most the largest: they are finite). No sort."""
        twice, halfway = self._setback_levels()
        if self.recent:
            top = max(self.recent)
            if top < twice or top < halfway:
                return False
        return True

    def setback(self) -> bool:
        """The median of the last RECENT losses is harmed (see ``harmed``)."""
        if not self.setback_possible():
            return False
        twice, halfway = self._setback_levels()
        med = self.recent_median()
        return med >= twice and med >= halfway

    def persist(self) -> int:
        """Consecutive records the norm has been >= RUNAWAY x H with the loss harmed."""
        return self._persist_run

    def recent_median(self) -> float:
        """Median of the last RECENT losses (NaN before there are that many)."""
        return sorted(self.recent)[RECENT // 2] if len(self.recent) == RECENT else math.nan

    def growing(self) -> bool:
        """Growth worth a warning: a run of increases out of the band, above H."""
        if self.run_len < MIN_RUN:
            return False
        growth = self.last_lg - max(self.run_start_lg, self.base)
        return (growth - self.run_max_inc >= RUN_GROWTH
                and self.last_lg > self.upper and self.last_lg > self.healthy)


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


def _layer_figures(layers: list[LayerRecord]) -> tuple[float, float, float, list[float]]:
    """(sum of squared update norms, largest update-to-weight ratio, largest activation std,
    weight norms) of a record's layers, each in its own pass: what :meth:`Monitor.observe`
    computes in one pass, for a record its scan found non-finite values in."""
    usq = 0.0
    for lr in layers:
        usq += lr.update_norm * lr.update_norm
    rewrite = 0.0
    for lr in layers:
        if lr.weight_norm > 0:
            r = lr.update_norm / lr.weight_norm
            if r > rewrite:
                rewrite = r
    act = 0.0
    for lr in layers:
        if lr.act_std is not None and lr.act_std > act:
            act = lr.act_std
    return usq, rewrite, act, [lr.weight_norm for lr in layers]


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
            nf = _first_non_finite(record) or (None, "loss", _kind(loss), [])
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
                found = _first_non_finite(record)
                if found is not None:
                    return self._non_finite(record, *found)
                usq, rewrite, act, weights = _layer_figures(layers)
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
        lg = math.log(g) if g > 0.0 else -745.0 if g == 0.0 else math.nan
        ll = math.log(loss) if loss > 0.0 else -745.0 if loss == 0.0 else math.nan
        lu = (0.5 * (math.log(usq) if usq > 0.0 else -745.0 if usq == 0.0 else math.nan)
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
            "baseline_grad_norm": _exp(st.base),
            "healthy_grad_norm": _exp(st.healthy),
            "ratio_to_healthy": _ratio(record.grad_norm, _exp(st.healthy)),
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
            ev.update({"growth_started_at": start, "loss_before": _exp(ll0)})
            msg = (f"Since step {start} every update has changed the weights by at least "
                   f"{fmt(REWRITE)} of their norm and the loss went from {fmt(_exp(ll0))} to "
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
                       layers=_growing_layers(record), evidence=ev, message=msg)

    def _growth_warning(self, record: StepRecord) -> Finding:
        st = self.state
        fc = self.forecaster.forecast(record.step)
        ev = self.evidence(record)
        ev.update({"growth_started_at": st.run_start_step,
                   "steps_to_overflow": fc.steps_to_overflow if fc else None})
        msg = (f"The gradient norm grew {fmt(_exp(st.last_lg - st.run_start_lg))}x since step "
               f"{st.run_start_step} to {fmt(record.grad_norm)}, "
               f"{fmt(ev['ratio_to_healthy'])}x the run's healthy scale "
               f"{fmt(ev['healthy_grad_norm'])}; not an explosion unless the loss is harmed.")
        if fc is not None:
            msg += f" {fc.message}"
        return Finding(kind="gradient_growth", severity="warning", step=record.step,
                       layers=_growing_layers(record), evidence=ev, message=msg)


def _growing_layers(record: StepRecord) -> list[int]:
    """Layers holding most of the gradient: those above half the largest layer norm."""
    norms = [lr.grad_norm for lr in record.layers]
    if not norms:
        return []
    top = max(norms)
    return [lr.layer for lr in record.layers if lr.grad_norm >= 0.5 * top]


def _ratio(a: float | int | str | None, b: float | int | str | None) -> float:
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return math.nan
    return a / b if b > 0 else math.inf


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
