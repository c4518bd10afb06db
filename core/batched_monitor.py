"""The online monitor (:class:`core.Monitor`) run over every member of a stack at once.

:class:`core.batched.BatchedTrainer` feeds all members one step at a time, so their monitors
advance in lockstep (the same step, the same record count). :class:`StackMonitor` keeps each
quantity of :class:`core.diagnostics.monitor.MonitorState` (and the monitor's overshoot,
catapult, setback and forecast state) as one array over the members and updates them with
whole-stack array operations, in the scalar monitor's order of operations (logs and exps
through :mod:`math`: :mod:`core.monitor_math`), so every number equals the scalar monitor's
bit for bit.

Whenever something can happen at a step for a member — a non-finite value, an explosion
rule, a growth warning, a setback or a catapult — that member's step is *replayed* by a real
:class:`core.Monitor` rebuilt from the arrays as they were before the step, and its state
written back (:mod:`core.monitor_replay`): the alerts (their messages, evidence and
forecasts) are the scalar monitor's own, and the common quiet step costs no per-member
Python at all. The warm-up is arrays too (the median norm and loss of the records so far,
the spread from their deviations, kept per row for a rebuilt monitor). The quiet step skips
what no row needs (a band left, a run far above H, weights rewritten, a growth warning
within reach), deciding that for the whole stack at once. The windows (the last losses, the
forecaster's last values) are views onto one history of per-step slots, so a step writes one
slot and moves nothing; the layers' activation stds are kept as they are, their largest and
its log taken only for a monitor being rebuilt.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from core.diagnostics.forecast import WINDOW, overflow_limit
from core.diagnostics.monitor import (
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
)
from core.diagnostics.report import Finding
from core.monitor_math import all_true, any_true, exp_each, log_each, py_max, py_min
from core.monitor_replay import ACT, FC_LOSS, LOSS, ScalarReplay, largest_std
from core.spec import TrainingSpec
from core.telemetry import StepRecord

__all__ = ["StackMonitor"]

Array = np.ndarray
# per-member scalars of the monitor and its state, as float64 arrays (ints stored exactly)
_FLOATS = ("base", "healthy", "spread", "loss_ref", "loss", "loss_avg", "lavg", "best",
           "last_lg", "last_ll", "run_max_inc", "run_start_lg", "run_start_ll", "ubase",
           "uhealthy", "prev_ll", "rw_from_ll", "c0", "c1", "c2", "c3", "c4", "ov1", "ov2")
_INTS = ("run_len", "run_start_step", "persist_run", "persist_far", "confirmed_at",
         "rw_from_step", "ov0")
_BOOLS = ("confirmed", "warned", "setback_seen", "catapult_seen", "nf_seen", "ov_set",
          "has_prev")
_SLOTS = 128  # the history's slots: the last RECENT move to the front when it is full
# MonitorState's and Monitor's starting values (other floats NaN, other ints -1)
_START = {"spread": MIN_SPREAD, "best": math.inf, "run_max_inc": 0.0, "run_len": 0,
          "run_start_step": 0, "persist_run": 0, "persist_far": 0}


class StackMonitor(ScalarReplay):
    """One :class:`core.Monitor` per member of a stack, as arrays over the stack's rows."""

    def __init__(self, specs: Sequence[TrainingSpec]) -> None:
        self.specs = list(specs)
        K = len(self.specs)
        self._mse = self.specs[0].loss == "mse"
        self._limit = math.log(overflow_limit(self.specs[0].dtype))
        self.s: dict[str, Array] = {}  # a new Monitor's state (an empty catapult list: NaN)
        for f in _FLOATS:
            self.s[f] = np.full(K, _START.get(f, math.nan))
        for f in _INTS:
            self.s[f] = np.full(K, _START.get(f, -1), dtype=np.int64)
        for f in _BOOLS:
            self.s[f] = np.zeros(K, dtype=bool)
        self.l0 = np.full(K, math.nan)
        # the warm-up's log norms and log losses (MonitorState._warm, _warm_loss)
        self.warm = np.full((2, K, WARMUP), math.nan)
        # the per-step values the windows (the last RECENT losses, the forecaster's last
        # WINDOW values) are read from, one slot a step: a window is a view, nothing shifts
        self.hist = np.full((_SLOTS, ACT + 1, K), math.nan)
        self.pos = RECENT
        self.rw_weights = np.zeros((K, 0))
        self.prev_w = np.zeros((K, 0))
        self._upper = np.zeros(K)  # the band's top of the step being observed
        self.n = 0  # records every member has observed (they observe in lockstep)
        self.last_step = -1
        self.recent_steps: deque[int] = deque(maxlen=RECENT)
        self.fc_steps: deque[int] = deque(maxlen=WINDOW)

    @property
    def confirmed(self) -> Array:
        """Per row: explosion confirmed (``Monitor.explosion_confirmed``)."""
        return self.s["confirmed"]

    def keep_rows(self, rows: Array) -> None:
        self.specs = [self.specs[r] for r in rows.tolist()]
        self.warm = self.warm[:, rows]
        self.s = {k: v[rows] for k, v in self.s.items()}
        self.l0 = self.l0[rows]
        self.hist = self.hist[:, :, rows]
        self.rw_weights = self.rw_weights[rows]
        self.prev_w = self.prev_w[rows]

    # ------------------------------------------------------------------ one step
    def observe(self, step: int, loss: Array, grad_norm: Array, layer_grad: Array,
                weight: Array, update: Array, act_std: Array | None,
                record: Callable[[int], StepRecord]) -> dict[int, list[Finding]]:
        """Feed every row's record of ``step`` (loss, global norm and ``(K, L)`` per-layer
        norms as in its :class:`StepRecord`; ``record(r)`` builds row r's record when a real
        monitor must see it). Returns the new alerts by row (rows without any left out)."""
        with np.errstate(all="ignore"):  # rows past a non-finite value compute NaN/Inf
            return self._observe(step, loss, grad_norm, layer_grad, weight, update, act_std,
                                 record)

    def _observe(self, step: int, loss: Array, grad_norm: Array, layer_grad: Array,
                 weight: Array, update: Array, act_std: Array | None,
                 record: Callable[[int], StepRecord]) -> dict[int, list[Finding]]:
        K, L = weight.shape
        if self.rw_weights.shape[1] != L:
            self.rw_weights = np.zeros((K, L))
            self.prev_w = np.zeros((K, L))
        # a row with a non-finite number has a non-finite sum (a finite sum that overflows
        # only sends a row through the scalar monitor, which decides)
        cols = [loss[:, None], grad_norm[:, None], weight, update, layer_grad]
        if act_std is not None:
            cols.append(act_std)
        finite = np.isfinite(np.add.reduce(np.concatenate(cols, axis=1), axis=1))
        # every log of the step in one pass: norm, loss, update norm (the activation stds are
        # kept as they are: their largest's log is only wanted when a real monitor is rebuilt)
        parts = [grad_norm, loss]
        if L:
            sq = update * update
            usq = sq[:, 0].copy()  # 0.0 + x is x: the scalar loop's sum, layer by layer
            for i in range(1, L):
                usq += sq[:, i]
            parts.append(usq)
        logs = log_each(np.concatenate(parts))
        lg, ll = logs[:K], logs[K:2 * K]
        lu = 0.5 * logs[2 * K:] if L else np.full(K, math.nan)
        self._grad_norm = grad_norm
        new, rw_new, prev_new = self._update(step, lg, ll, loss, lu, weight, update)
        pos = self._slot(K, act_std)
        hist = self.hist
        if self._mse:
            hist[pos, 0] = lg
            np.multiply(ll, 0.5, out=hist[pos, FC_LOSS])
        else:
            hist[pos, :LOSS] = logs[:2 * K].reshape(2, K)  # the log norm and the log loss
        hist[pos, LOSS] = loss
        recent_new = hist[pos + 1 - RECENT:pos + 1, LOSS]
        event = self._events(step, new, recent_new, loss, lg)
        event |= ~finite
        event &= ~self.s["nf_seen"]
        alerts: dict[int, list[Finding]] = {}
        for r in event.nonzero()[0].tolist():
            m = self._scalar(r)
            found = m.observe(record(r))
            if found:
                alerts[r] = found
            self._load(r, m, new, rw_new, prev_new)
        self.s = new
        self.rw_weights, self.prev_w = rw_new, prev_new
        self.n += 1
        self.pos = pos + 1
        self.last_step = step
        self.recent_steps.append(step)
        self.fc_steps.append(step)
        return alerts

    def _slot(self, K: int, act_std: Array | None) -> int:
        """The history's slot of this step (the windows before it left in place), holding
        this step's activation stds: the forecaster's largest is taken from them on a
        rebuild (:func:`core.monitor_replay.largest_std`; none: zeros give its 0.0)."""
        A = 1 if act_std is None else act_std.shape[1]
        if self.n == 0 and self.hist.shape[1] != ACT + A:
            self.hist = np.full((_SLOTS, ACT + A, K), math.nan)
        pos = self.pos
        if pos == _SLOTS:
            self.hist[:RECENT] = self.hist[_SLOTS - RECENT:]
            pos = self.pos = RECENT
        act = self.hist[pos, ACT:]
        if act_std is None:
            act[:] = 0.0
        elif act.shape[0] == A:
            act[:] = act_std.T
        else:  # (a stack whose layers change) the largest, then zeros: the same maximum
            act[:] = 0.0
            act[0] = largest_std(act_std)
        return pos

    def _update(self, step: int, lg: Array, ll: Array, loss: Array, lu: Array, w: Array,
                u: Array) -> tuple[dict[str, Array], Array, Array]:
        """``MonitorState.update`` and ``Monitor._track_overshoot`` past the warm-up, for all
        rows (rows still warming up or replayed are overwritten afterwards)."""
        s = self.s
        new = dict(s)
        last_lg = s["last_lg"]
        inc = lg > last_lg
        run_len = s["run_len"]
        start = inc & (run_len == 0)
        rmi = s["run_max_inc"]
        if any_true(start):
            new["run_start_lg"] = np.where(start, last_lg, s["run_start_lg"])
            new["run_start_ll"] = np.where(start, s["last_ll"], s["run_start_ll"])
            new["run_start_step"] = np.where(start, self.last_step, s["run_start_step"])
            rmi = np.where(start, 0.0, rmi)
        dlg = lg - last_lg
        new["run_max_inc"] = np.where(inc & (dlg > rmi), dlg, rmi)  # max(rmi, dlg) if inc
        new["run_len"] = (run_len + 1) * inc
        base, spread, healthy = s["base"], s["spread"], s["healthy"]
        if self.n < WARMUP:
            return self._warm_up(new, step, lg, ll, loss, lu, w, u)
        d = lg - base
        spread3 = 3.0 * spread
        # max(x, c) and min(c, x) of a constant c > 0: np.maximum (NaN stays NaN) and
        # np.fmin (NaN gives c), as Python's max and min
        inside = d <= (base + np.maximum(spread3, BAND_MIN)) - base
        lim = 2.0 * spread
        b_new = base + ALPHA * py_max(-lim, py_min(lim, d))
        sp_new = spread + ALPHA * (py_min(np.abs(d), spread3) - spread)
        sp_new = np.fmin(np.maximum(sp_new, MIN_SPREAD), MAX_SPREAD)
        if not all_true(inside):  # (usually every row is inside its band or below)
            b_new = np.where(inside, b_new, base)
            sp_new = np.where(inside, sp_new, spread)
        h_new = np.where(b_new > healthy, b_new, healthy)
        upper = self._upper = b_new + np.maximum(3.0 * sp_new, BAND_MIN)
        track = lg <= upper
        ub = s["ubase"]
        ub_new = ub + ALPHA * (lu - ub)
        if any_true(ub != ub):
            ub_new = np.where(ub != ub, lu, ub_new)
        uh = s["uhealthy"]
        if all_true(track):
            uh_new = np.where(~(uh >= ub_new), ub_new, uh)
        else:
            ub_new = np.where(track, ub_new, ub)
            uh_new = np.where(track & ~(uh >= ub_new), ub_new, uh)
        new.update(base=b_new, spread=sp_new, healthy=h_new, ubase=ub_new, uhealthy=uh_new)
        new["loss"] = loss.copy()  # replays write into it: not into the caller's array
        lavg = s["lavg"] + ALPHA * (ll - s["lavg"])
        avg = exp_each(lavg)
        best = np.where(avg < s["best"], avg, s["best"])
        new.update(lavg=lavg, loss_avg=avg, best=best, last_lg=lg, last_ll=ll)
        return self._persist_and_overshoot(new, step, lg, ll, loss, lu, w, u, upper)

    def _warm_up(self, new: dict[str, Array], step: int, lg: Array, ll: Array, loss: Array,
                 lu: Array, w: Array, u: Array) -> tuple[dict[str, Array], Array, Array]:
        """The rest of ``MonitorState.update`` for a record of the warm-up (the median norm
        and loss so far, no band yet), then as past it."""
        s = self.s
        n = self.n + 1  # records in the warm-up with this one
        warm = self.warm.copy()  # (the state before this step stays as it was)
        warm[0, :, n - 1] = lg
        warm[1, :, n - 1] = ll
        wl = np.sort(warm[0, :, :n], axis=1)
        base = wl[:, n // 2] if n % 2 else 0.5 * (wl[:, n // 2 - 1] + wl[:, n // 2])
        if n >= 3:
            dev = np.sort(np.abs(warm[0, :, :n] - base[:, None]), axis=1)
            mad: Array | float = 1.4826 * dev[:, n // 2]
            spread = py_min(MAX_SPREAD, py_max(MIN_SPREAD, mad))
        else:
            spread = np.full(len(lg), min(MAX_SPREAD, max(MIN_SPREAD, MIN_SPREAD)))
        loss_ref = np.sort(warm[1, :, :n], axis=1)[:, (n - 1) // 2]
        h = s["healthy"]
        healthy = np.where(h != h, lg, h)
        ub = s["ubase"]
        ub_new = np.where(ub != ub, lu, ub + ALPHA * (lu - ub))
        uh = s["uhealthy"]
        uh_new = np.where(~(uh >= ub_new), ub_new, uh)
        lavg = ll.copy() if n == 1 else s["lavg"] + ALPHA * (ll - s["lavg"])
        l0 = exp_each(loss_ref)
        best = s["best"]
        new.update(base=base, spread=spread, healthy=healthy, ubase=ub_new, uhealthy=uh_new,
                   loss_ref=loss_ref, lavg=lavg, loss_avg=exp_each(lavg),
                   best=np.where(l0 < best, l0, best), last_lg=lg, last_ll=ll)
        new["loss"] = loss.copy()
        self.warm, self.l0 = warm, l0  # (the state before the step does not hold them)
        upper = self._upper = base + np.maximum(3.0 * spread, BAND_MIN)
        return self._persist_and_overshoot(new, step, lg, ll, loss, lu, w, u, upper)

    def _persist_and_overshoot(self, new: dict[str, Array], step: int, lg: Array, ll: Array,
                               loss: Array, lu: Array, w: Array, u: Array,
                               upper: Array) -> tuple[dict[str, Array], Array, Array]:
        """The runaway runs of ``MonitorState.update`` and ``Monitor._track_overshoot``."""
        s = self.s
        best, h_new, uh_new = new["best"], new["healthy"], new["uhealthy"]
        above = lg - h_new
        far = above >= RUNAWAY  # then also above the band, with the update feeding it
        if any_true(far):
            far &= (lg > upper) & ~(lu - uh_new < FEEDBACK * above)
        if any_true(far):
            l0 = self.l0
            progress = l0 - best
            harm = np.where(progress > 0, (loss - best) / progress,
                            np.where(loss > l0, math.inf, 0.0))
            harmed = (harm >= HARM) & (loss >= 2.0 * best)
            new["persist_run"] = np.where(far & harmed, s["persist_run"] + 1, 0)
            very_far = far & (above >= 2.0 * RUNAWAY)
            new["persist_far"] = np.where(very_far & harmed, s["persist_far"] + 1, 0)
        else:  # no row far above its band: both runs end
            for key in ("persist_run", "persist_far"):
                if any_true(s[key]):
                    new[key] = np.zeros(len(lg), dtype=np.int64)
        # Monitor._track_overshoot
        new["prev_ll"] = ll
        if not all_true(s["has_prev"]):
            new["has_prev"] = np.ones(len(lg), dtype=bool)
        # a ratio u / w >= REWRITE needs u >= 0.4 w (w > 0; a NaN row is replayed): none such,
        # no row rewrites its weights and no overshoot can start or end
        if not any_true(u >= (0.8 * REWRITE) * w):
            rw = None
        else:
            pos = w > 0
            ratio = np.where(pos, u / np.where(pos, w, 1.0), 0.0)
            rewrite = py_max(0.0, ratio.max(axis=1)) if ratio.shape[1] else np.zeros(len(lg))
            rw = rewrite >= REWRITE
        if rw is None or not any_true(rw):
            if any_true(s["rw_from_step"] != -1):
                new["rw_from_step"] = np.full(len(lg), -1, dtype=np.int64)
            return new, self.rw_weights.copy(), w.copy()
        fresh = rw & (s["rw_from_step"] < 0)
        later = rw & ~fresh
        rw2 = 2.0 * self.rw_weights
        grew = ((w >= rw2) & (rw2 > 0)).any(axis=1)
        over = later & (step > s["rw_from_step"]) & (ll - s["rw_from_ll"] >= OVERSHOOT_LOSS) & grew
        new["ov_set"] = s["ov_set"] | over
        new["ov0"] = np.where(over, s["rw_from_step"], s["ov0"])
        new["ov1"] = np.where(over, s["rw_from_ll"], s["ov1"])
        new["ov2"] = np.where(over, ll, s["ov2"])
        new["rw_from_step"] = np.where(fresh, step, np.where(rw, s["rw_from_step"], -1))
        new["rw_from_ll"] = np.where(fresh, ll, s["rw_from_ll"])
        start_w = np.where(s["has_prev"][:, None], self.prev_w, py_max(w - u, 0.0))
        return new, np.where(fresh[:, None], start_w, self.rw_weights), w.copy()

    def _events(self, step: int, new: dict[str, Array], recent: Array, loss: Array,
                lg: Array) -> Array:
        """Rows whose monitor may raise an alert at this step (and the catapult state of the
        others): an explosion rule, a growth warning, a setback or a catapult."""
        s = self.s
        n = self.n + 1  # the state's record count after this step
        watch = ~s["confirmed"]  # a confirmed explosion raises nothing more
        rule = lg >= 0.5 * self._limit
        # (the runs' arrays are the state's own only while all zero: see _update)
        if n > 1 and (new["persist_run"] is not s["persist_run"]
                      or new["persist_far"] is not s["persist_far"]):
            rule |= (new["persist_run"] >= PERSIST + 1) | (new["persist_far"] >= PERSIST)
        rule |= new["ov_set"]
        run_len = new["run_len"]
        long_run = (run_len >= MIN_RUN) & ~s["warned"]
        if any_true(long_run):  # a growth warning needs a run of increases
            upper = self._upper  # the band's top after this step, from _update
            growth = lg - py_max(new["run_start_lg"], new["base"])
            rule |= (long_run & (growth - new["run_max_inc"] >= RUN_GROWTH) & (lg > upper)
                     & (lg > new["healthy"]))
        event = watch & rule
        if n > WARMUP + RECENT:
            # the median of the window (finite in every row that can be in a setback: a
            # non-finite loss is replayed) is >= both levels when more than half its losses
            # are >= the larger of them (NaN: none is); np.maximum of x and 0.0 differs from
            # Python's max only in the sign of a zero, which the sum and the comparison
            # cannot see
            best = new["best"]
            level = np.maximum(2.0 * best, best + HARM * np.maximum(self.l0 - best, 0.0))
            above = np.add.reduce(recent >= level, axis=0)
            event |= watch & ~s["setback_seen"] & (above > RECENT // 2)
        if n == 1:  # the first record starts every row's catapult watch (an explosion
            # confirmed at once leaves it empty: that row is replayed)
            new.update(c0=loss.copy(), c1=self._grad_norm.copy(), c2=np.zeros(len(loss)),
                       c3=np.zeros(len(loss)), c4=np.full(len(loss), -1.0))
        elif n <= CATAPULT_WINDOW:
            on = watch & ~s["catapult_seen"]
            c0, c2, c3 = s["c0"], s["c2"], s["c3"]
            high = on & (loss >= CATAPULT_JUMP * c0) & ((c2 > 0) | (n <= 3))
            back = on & ~high & (c2 >= 3) & (loss < c0)
            reset = on & ~high & ~back & (c2 < 3)
            peak = high & (loss > c3)
            new["c2"] = np.where(high, c2 + 1, np.where(reset, 0.0, c2))
            new["c3"] = np.where(peak, loss, c3)
            new["c4"] = np.where(peak, float(step), s["c4"])
            event |= back
        return event
