"""The online monitor's thresholds and its running state, updated in O(1) per finite step.

The constants are the rules' thresholds and :class:`MonitorState` keeps the quantities they
read (the baseline B, the healthy scale H, the normal band, the loss levels L0 and L*, the
current growth run and the rules' streaks); both are defined in :mod:`core.diagnostics.monitor`'s
doc (the "module doc" the methods below refer to), which re-exports them, and
:mod:`core.batched_monitor` mirrors them for stacked members, bit for bit.
"""

from __future__ import annotations

import math
from collections import deque

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
    "MonitorState",
    "exp_or_inf",
]

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
        return exp_or_inf(self.loss_ref)

    def loss_harm(self) -> float:
        """Share of the progress (L0 - L*) the current loss has undone (see the module doc)."""
        l0, best = exp_or_inf(self.loss_ref), self.best_loss
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
        loss_avg = exp_or_inf(lavg)
        self.loss_avg = loss_avg
        l0 = exp_or_inf(self.loss_ref)
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
        best, l0 = self.best_loss, exp_or_inf(self.loss_ref)
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



def exp_or_inf(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
