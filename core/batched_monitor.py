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
forecaster's last values) are views onto one history of per-step slots: a step writes a slot
and moves nothing (the largest activation std and its log are taken only on a rebuild).
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
from core.monitor_math import any_true, exp_each, log_each, py_max, setback_rows, warm_medians
from core.monitor_replay import FC_LOSS, KEEP, LOG_NORM, LOSS, ScalarReplay, history, new_state
from core.spec import TrainingSpec
from core.telemetry import StepRecord

__all__ = ["StackMonitor"]

Array = np.ndarray


class StackMonitor(ScalarReplay):
    """One :class:`core.Monitor` per member of a stack, as arrays over the stack's rows."""

    def __init__(self, specs: Sequence[TrainingSpec]) -> None:
        self.specs = list(specs)
        K = len(self.specs)
        self._mse = self.specs[0].loss == "mse"
        self._limit = math.log(overflow_limit(self.specs[0].dtype))
        self.s = new_state(K)
        self.l0 = np.full(K, math.nan)
        # the warm-up's log norms and log losses (MonitorState._warm, _warm_loss)
        self.warm = np.full((2, K, WARMUP), math.nan)
        self.hist, self.pos = history(K, 1), KEEP  # the windows' values, a slot a step
        self.rw_weights = np.zeros((K, 0))
        self.prev_w = np.zeros((K, 0))
        self._upper = np.zeros(K)  # the band's top of the step being observed
        self.n = 0  # records every member has observed (they observe in lockstep)
        # what the quiet steps know of the whole state, not to check it every step (after a
        # replay they ask again): the flags only replays change (negated, by _events); no
        # row's runaway run, every row's previous weights, no row's run of rewriting updates,
        # no row's overshoot
        self._masks: tuple[Array, ...] | None = None
        self._runs_zero, self._all_prev, self._rw_idle, self._no_overshoot = True, False, True, True
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
        self.hist = np.ascontiguousarray(self.hist[:, :, rows])  # (a step writes a slot)
        self._upper = self._upper[rows]
        self._masks = None
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
            # 0.0 + x is x: the scalar loop's sum, layer by layer
            usq = sq[:, 0] + sq[:, 1] if L > 1 else sq[:, 0]
            for i in range(2, L):
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
            hist[pos, LOG_NORM] = lg
            np.multiply(ll, 0.5, out=hist[pos, FC_LOSS])
        else:
            hist[pos, :LOSS] = logs[:2 * K].reshape(2, K)  # the log norm and the log loss
        hist[pos, LOSS] = loss
        recent_new = hist[pos + 1 - RECENT:pos + 1, LOSS]
        event = self._events(step, new, recent_new, loss, lg, finite)
        alerts: dict[int, list[Finding]] = {}
        replayed = event.nonzero()[0].tolist()
        if replayed:  # what the quiet path knew may no longer hold
            self._masks = None
            self._runs_zero = self._all_prev = self._rw_idle = self._no_overshoot = False
        for r in replayed:
            m = self._scalar(r)
            found = m.observe(record(r))
            if found:
                alerts[r] = found
            self._load(r, m, new, rw_new, prev_new)
            self._upper[r] = m.state.upper  # (the next step's band, as the row's own)
        self.s = new
        self.rw_weights, self.prev_w = rw_new, prev_new
        self.n += 1
        self.pos = pos + 1
        self.last_step = step
        self.recent_steps.append(step)
        self.fc_steps.append(step)
        return alerts

    def _update(self, step: int, lg: Array, ll: Array, loss: Array, lu: Array, w: Array,
                u: Array) -> tuple[dict[str, Array], Array, Array]:
        """``MonitorState.update`` and ``Monitor._track_overshoot`` past the warm-up, for all
        rows (rows still warming up or replayed are overwritten afterwards)."""
        s = self.s
        new = dict(s)
        last_lg = s["last_lg"]
        inc = lg > last_lg
        run_len = new["run_len"] = s["run_len"] + 1
        run_len *= inc
        start = run_len == 1  # a run starts: an increase after none
        rmi = s["run_max_inc"]
        dlg = lg - last_lg
        # (usually some row starts a run)
        new["run_start_lg"] = np.where(start, last_lg, s["run_start_lg"])
        new["run_start_ll"] = np.where(start, s["last_ll"], s["run_start_ll"])
        new["run_start_step"] = np.where(start, self.last_step, s["run_start_step"])
        grow = dlg > rmi
        grow |= start  # (a run's first increase is > 0: max(0.0, dlg) is dlg)
        grow &= inc
        new["run_max_inc"] = np.where(grow, dlg, rmi)  # max(rmi, dlg) if inc
        if self.n < WARMUP:
            return self._warm_up(new, step, lg, ll, loss, lu, w, u)
        return self._band(new, step, lg, ll, loss, lu, w, u)

    def _band(self, new: dict[str, Array], step: int, lg: Array, ll: Array, loss: Array,
              lu: Array, w: Array, u: Array) -> tuple[dict[str, Array], Array, Array]:
        """The rest of ``MonitorState.update`` past the warm-up.

        In every row that is not replayed the log norm, the baseline, the spread and H are
        finite (a non-finite record is replayed, and the warm-up starts them from finite logs),
        so NumPy's minimum and maximum give Python's ``min`` and ``max`` there (a tie is one
        value), a step outside its band adds 0.0 to the baseline (never -0.0: math.log never
        gives it, nor do medians and averages of logs) and to the spread (already between its
        bounds), and the band's top before this step is the one computed after the previous
        step (replays refresh it). The update's scale (NaN without layers, Inf on an
        overflowing update) keeps the scalar's comparisons as they are."""
        s = self.s
        base, spread = s["base"], s["spread"]
        d = lg - base
        outside = d > self._upper - base  # (above its band: finite rows)
        lim = 2.0 * spread
        steps = np.empty((2, len(d)))  # the baseline's and the spread's, both at once
        step_b, step_s = steps[0], steps[1]
        np.minimum(d, lim, out=step_b)
        np.negative(lim, out=lim)
        np.maximum(step_b, lim, out=step_b)
        np.abs(d, out=step_s)
        np.minimum(step_s, 3.0 * spread, out=step_s)
        step_s -= spread
        steps *= ALPHA
        np.copyto(steps, 0.0, where=outside)  # (a row outside its band keeps them)
        b_new = base + step_b
        sp_new = spread + step_s
        np.maximum(sp_new, MIN_SPREAD, out=sp_new)
        np.minimum(sp_new, MAX_SPREAD, out=sp_new)
        h_new = np.maximum(s["healthy"], b_new)
        upper = self._upper = b_new + np.maximum(3.0 * sp_new, BAND_MIN)
        track = lg <= upper
        ub = s["ubase"]
        ub_new = ub + ALPHA * (lu - ub)
        if any_true(ub != ub):
            ub_new = np.where(ub != ub, lu, ub_new)
        uh = s["uhealthy"]
        ub_new = np.where(track, ub_new, ub)  # (usually some row is above its band)
        uh_new = np.where(track & ~(uh >= ub_new), ub_new, uh)
        new.update(base=b_new, spread=sp_new, healthy=h_new, ubase=ub_new, uhealthy=uh_new)
        new["loss"] = loss.copy()  # replays write into it: not into the caller's array
        lavg = s["lavg"]
        lavg = lavg + ALPHA * (ll - lavg)
        avg = exp_each(lavg)
        new.update(lavg=lavg, loss_avg=avg, best=np.minimum(s["best"], avg), last_lg=lg,
                   last_ll=ll)
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
        base, spread, loss_ref = warm_medians(warm[0, :, :n], warm[1, :, :n])
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
        near = any_true(far)
        if near:
            far &= (lg > upper) & ~(lu - uh_new < FEEDBACK * above)
            near = any_true(far)
        if near:
            l0 = self.l0
            progress = l0 - best
            harm = np.where(progress > 0, (loss - best) / progress,
                            np.where(loss > l0, math.inf, 0.0))
            harmed = (harm >= HARM) & (loss >= 2.0 * best)
            new["persist_run"] = np.where(far & harmed, s["persist_run"] + 1, 0)
            very_far = far & (above >= 2.0 * RUNAWAY)
            new["persist_far"] = np.where(very_far & harmed, s["persist_far"] + 1, 0)
            self._runs_zero = False
        else:  # no row far above its band: both runs end
            if not self._runs_zero:
                for key in ("persist_run", "persist_far"):
                    if any_true(s[key]):
                        new[key] = np.zeros(len(lg), dtype=np.int64)
                self._runs_zero = True
        # Monitor._track_overshoot
        new["prev_ll"] = ll
        if not self._all_prev:
            if np.count_nonzero(s["has_prev"]) < len(lg):
                new["has_prev"] = np.ones(len(lg), dtype=bool)
            self._all_prev = True
        # a ratio u / w >= REWRITE needs u >= 0.4 w (w > 0; a NaN row is replayed): none such,
        # no row rewrites its weights and no overshoot can start or end
        if not any_true(u >= (0.8 * REWRITE) * w):
            rw = None
        else:
            # the largest ratio u / w of the layers with w > 0 (0.0 if none) is >= REWRITE
            # when one of them is (a NaN ratio: a replayed row)
            big = u / w >= REWRITE
            big &= w > 0
            rw = big.any(axis=1)
        if rw is None or not any_true(rw):
            if not self._rw_idle:
                if any_true(s["rw_from_step"] != -1):
                    new["rw_from_step"] = np.full(len(lg), -1, dtype=np.int64)
                self._rw_idle = True
            # (a replay writes its row of the weights only after reading it)
            return new, self.rw_weights, w.copy()
        self._rw_idle = self._no_overshoot = False
        fresh = rw & (s["rw_from_step"] < 0)
        later = rw & ~fresh
        if any_true(later):  # an overshoot needs a run of rewriting updates going on
            rw2 = 2.0 * self.rw_weights
            over = ((w >= rw2) & (rw2 > 0)).any(axis=1)
            over &= later & (step > s["rw_from_step"]) & (ll - s["rw_from_ll"] >= OVERSHOOT_LOSS)
            if any_true(over):
                new["ov_set"] = s["ov_set"] | over
                new["ov0"] = np.where(over, s["rw_from_step"], s["ov0"])
                new["ov1"] = np.where(over, s["rw_from_ll"], s["ov1"])
                new["ov2"] = np.where(over, ll, s["ov2"])
        new["rw_from_step"] = np.where(fresh, step, np.where(rw, s["rw_from_step"], -1))
        new["rw_from_ll"] = np.where(fresh, ll, s["rw_from_ll"])
        if not any_true(fresh):  # (no run starts: the weights before one stay as they are)
            return new, self.rw_weights, w.copy()
        start_w = np.where(s["has_prev"][:, None], self.prev_w, py_max(w - u, 0.0))
        return new, np.where(fresh[:, None], start_w, self.rw_weights), w.copy()

    def _events(self, step: int, new: dict[str, Array], recent: Array, loss: Array,
                lg: Array, finite: Array) -> Array:
        """Rows whose monitor may raise an alert at this step (and the catapult state of the
        others): an explosion rule, a growth warning, a setback or a catapult, or a
        non-finite value (none of them past a non-finite value: that monitor ignores it)."""
        s = self.s
        n = self.n + 1  # the state's record count after this step
        if self._masks is None:  # (flags only a replay changes)
            watch = ~s["confirmed"]  # a confirmed explosion raises nothing more
            self._masks = (watch, ~s["nf_seen"], watch & ~s["warned"], ~s["setback_seen"],
                           watch & ~s["catapult_seen"])
        watch, alive, unwarned, no_setback, on = self._masks  # (unwarned: and watched)
        rule = lg >= 0.5 * self._limit
        # (the runs' arrays are the state's own only while all zero: see _update)
        if n > 1 and (new["persist_run"] is not s["persist_run"]
                      or new["persist_far"] is not s["persist_far"]):
            rule |= (new["persist_run"] >= PERSIST + 1) | (new["persist_far"] >= PERSIST)
        if not self._no_overshoot:
            rule |= new["ov_set"]
        long_run = new["run_len"] >= MIN_RUN
        long_run &= unwarned
        if any_true(long_run):  # a growth warning needs a run of increases out of the band
            long_run &= lg > self._upper  # the band's top after this step, from _update
        if any_true(long_run):
            # (a run starts from a finite log norm, the baseline is finite: np.maximum is
            # Python's max there)
            growth = lg - np.maximum(new["run_start_lg"], new["base"])
            growth -= new["run_max_inc"]
            long_run &= growth >= RUN_GROWTH
            long_run &= lg > new["healthy"]
            rule |= long_run
        if n > WARMUP + RECENT:
            setback = setback_rows(recent, new["best"], self.l0)
            setback &= no_setback
            rule |= setback
        event = watch & rule
        if n == 1:  # the first record starts every row's catapult watch (an explosion
            # confirmed at once leaves it empty: that row is replayed)
            new.update(c0=loss.copy(), c1=self._grad_norm.copy(), c2=np.zeros(len(loss)),
                       c3=np.zeros(len(loss)), c4=np.full(len(loss), -1.0))
        elif n <= CATAPULT_WINDOW and (any_true(loss >= CATAPULT_JUMP * s["c0"])
                                       or any_true(s["c2"])):  # (else: no row moves)
            c0, c2, c3 = s["c0"], s["c2"], s["c3"]
            high = on & (loss >= CATAPULT_JUMP * c0) & ((c2 > 0) | (n <= 3))
            back = on & ~high & (c2 >= 3) & (loss < c0)
            reset = on & ~high & ~back & (c2 < 3)
            peak = high & (loss > c3)
            new["c2"] = np.where(high, c2 + 1, np.where(reset, 0.0, c2))
            new["c3"] = np.where(peak, loss, c3)
            new["c4"] = np.where(peak, float(step), s["c4"])
            event |= back
        if np.count_nonzero(finite) < len(finite):
            # (a non-finite value confirms an explosion: every row past one is confirmed,
            # so only this one needs the mask)
            event |= ~finite & alive
        return event
