"""A row of :class:`core.batched_monitor.StackMonitor` as a real :class:`core.Monitor`, and back.

Whenever something can happen at a step for a member, the stack monitor replays that
member's step with a real monitor rebuilt from the arrays as they were before the step
(:meth:`ScalarReplay._scalar`), then writes the monitor's state after the step into the
member's row of the new arrays (:meth:`ScalarReplay._load`): the alerts are the scalar
monitor's own, and the arrays go on from exactly its state.

The windows a rebuilt monitor reads (its last RECENT losses, its forecaster's last WINDOW
values) are views onto one history of per-step slots (:func:`history`,
:meth:`ScalarReplay._slot`): a step writes its own slot and nothing shifts, so the windows
before the step stay readable while a replay writes the row's windows ending with it.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from core.diagnostics.forecast import WINDOW
from core.diagnostics.monitor import MIN_SPREAD, RECENT, WARMUP, Monitor
from core.diagnostics.series import safe_log
from core.spec import TrainingSpec

__all__ = ["ACT", "FC_LOSS", "FORECAST_SERIES", "KEEP", "LOG_NORM", "LOSS", "SLOTS", "ScalarReplay",
           "history", "largest_std", "new_state"]

Array = np.ndarray
FORECAST_SERIES = ("grad_norm", "activation", "loss")  # the forecaster's series
# the columns of a slot of the history: the log norm and the loss series of the forecaster
# (the log loss, halved for MSE), the loss itself (the setback's window), then each layer's
# activation std (their largest is the forecaster's activation series, taken on a rebuild)
LOG_NORM, FC_LOSS, LOSS, ACT = 0, 1, 2, 3
SLOTS = 128  # the history's slots: the last KEEP move to the front when it is full
KEEP = max(RECENT, WINDOW)  # the slots the windows reach back (the first step's slot: KEEP)
# per-member scalars of the monitor and its state, as float64 arrays (ints stored exactly)
_FLOATS = ("base", "healthy", "spread", "loss_ref", "loss", "loss_avg", "lavg", "best",
           "last_lg", "last_ll", "run_max_inc", "run_start_lg", "run_start_ll", "ubase",
           "uhealthy", "prev_ll", "rw_from_ll", "c0", "c1", "c2", "c3", "c4", "ov1", "ov2")
_INTS = ("run_len", "run_start_step", "persist_run", "persist_far", "confirmed_at",
         "rw_from_step", "ov0")
_BOOLS = ("confirmed", "warned", "setback_seen", "catapult_seen", "nf_seen", "ov_set",
          "has_prev")
# MonitorState's and Monitor's starting values (other floats NaN, other ints -1)
_START = {"spread": MIN_SPREAD, "best": math.inf, "run_max_inc": 0.0, "run_len": 0,
          "run_start_step": 0, "persist_run": 0, "persist_far": 0}


def new_state(K: int) -> dict[str, Array]:
    """A new Monitor's state for ``K`` rows (an empty catapult list: NaN)."""
    s: dict[str, Array] = {}
    for f in _FLOATS:
        s[f] = np.full(K, _START.get(f, math.nan))
    for f in _INTS:
        s[f] = np.full(K, _START.get(f, -1), dtype=np.int64)
    for f in _BOOLS:
        s[f] = np.zeros(K, dtype=bool)
    return s


def history(K: int, A: int) -> Array:
    """An empty history of ``K`` rows (``A`` activation columns): NaN, as the windows of a
    new monitor are empty."""
    return np.full((SLOTS, ACT + A, K), math.nan)


def largest_std(stds: list[float]) -> float:
    """The forecaster's largest activation std of a record from its layers' stds, as the
    stack monitor keeps it: ``max(0.0, std, ...)``, and 0.0 if any is NaN (the record is then
    non-finite: the scalar monitor never forecasts from it)."""
    top = 0.0
    for v in stds:
        if v != v:
            return 0.0
        if v > top:
            top = v
    return top


class ScalarReplay:
    """The scalar round trip of :class:`core.batched_monitor.StackMonitor`, a mixin: the
    stack monitor owns the arrays and counters declared here."""

    specs: list[TrainingSpec]
    s: dict[str, Array]  # the monitors' scalars, one array each over the rows
    l0: Array
    warm: Array
    hist: Array  # (slots, 3 + activation columns, rows): see :meth:`_windows`
    pos: int  # the slot of the step being observed (the state's windows end before it)
    rw_weights: Array
    prev_w: Array
    n: int
    last_step: int
    recent_steps: deque[int]
    fc_steps: deque[int]

    def _scalar(self, r: int) -> Monitor:
        """A real monitor for row ``r`` with the state before this step."""
        s = self.s
        m = Monitor(self.specs[r])
        st = m.state
        st.n = self.n
        n_warm = min(self.n, WARMUP)
        st._warm = self.warm[0, r, :n_warm].tolist()
        st._warm_loss = self.warm[1, r, :n_warm].tolist()
        for attr, key in (("base", "base"), ("healthy", "healthy"), ("spread", "spread"),
                          ("loss_ref", "loss_ref"), ("loss", "loss"), ("loss_avg", "loss_avg"),
                          ("_loss_lavg", "lavg"), ("best_loss", "best"), ("last_lg", "last_lg"),
                          ("last_ll", "last_ll"), ("run_max_inc", "run_max_inc"),
                          ("run_start_lg", "run_start_lg"), ("run_start_ll", "run_start_ll"),
                          ("ubase", "ubase"), ("uhealthy", "uhealthy")):
            setattr(st, attr, float(s[key][r]))
        st.last_step = self.last_step
        st.run_len = int(s["run_len"][r])
        st.run_start_step = int(s["run_start_step"][r])
        st._persist_run = int(s["persist_run"][r])
        st._persist_far = int(s["persist_far"][r])
        pos = self.pos
        cnt = min(self.n, RECENT)
        st.recent = deque(self.hist[pos - cnt:pos, LOSS, r].tolist(), maxlen=RECENT)
        st.recent_steps = deque(self.recent_steps, maxlen=RECENT)
        cnt = min(self.n, WINDOW)
        steps = list(self.fc_steps)
        h = self.hist[pos - cnt:pos, :, r]
        series = {"grad_norm": h[:, LOG_NORM].tolist(), "loss": h[:, FC_LOSS].tolist(),
                  "activation": [safe_log(largest_std(v)) for v in h[:, ACT:].tolist()]}
        for name in FORECAST_SERIES:
            m.forecaster._hist[name] = deque(zip(steps, series[name], strict=True),
                                             maxlen=WINDOW)
        m.explosion_confirmed = bool(s["confirmed"][r])
        at = int(s["confirmed_at"][r])
        m.confirmed_at = at if m.explosion_confirmed else None
        m._warned_growth = bool(s["warned"][r])
        m._setback_seen = bool(s["setback_seen"][r])
        m._catapult_seen = bool(s["catapult_seen"][r])
        m._non_finite_seen = bool(s["nf_seen"][r])
        c0 = float(s["c0"][r])
        m._catapult = ([] if c0 != c0 else  # not started (NaN: not a first loss either)
                       [c0] + [float(s[c][r]) for c in ("c1", "c2", "c3", "c4")])
        m._prev_ll = float(s["prev_ll"][r])
        m._rewrite_from_ll = float(s["rw_from_ll"][r])
        m._rewrite_from_step = int(s["rw_from_step"][r])
        m._rewrite_weights = self.rw_weights[r].tolist()
        m._prev_weights = self.prev_w[r].tolist() if s["has_prev"][r] else []
        m._overshoot = ((int(s["ov0"][r]), float(s["ov1"][r]), float(s["ov2"][r]))
                        if s["ov_set"][r] else None)
        return m

    def _slot(self, K: int, act_std: Array | None) -> int:
        """The history's slot of this step (the windows before it left in place), holding
        this step's activation stds: the forecaster's largest is taken from them on a
        rebuild (:func:`core.monitor_replay.largest_std`; none: zeros give its 0.0)."""
        A = 1 if act_std is None else act_std.shape[1]
        if self.n == 0 and self.hist.shape[1] != ACT + A:
            self.hist = history(K, A)
        pos = self.pos
        if pos == SLOTS:
            self.hist[:KEEP] = self.hist[SLOTS - KEEP:]
            pos = self.pos = KEEP
        act = self.hist[pos, ACT:]
        if act_std is None:
            act[:] = 0.0
        elif act.shape[0] == A:
            act[:] = act_std.T
        else:  # (a stack whose layers change) the largest, then zeros: the same maximum
            act[:] = 0.0
            act[0] = [largest_std(row) for row in act_std.tolist()]
        return pos

    def _load(self, r: int, m: Monitor, new: dict[str, Array], rw: Array,
              prev: Array) -> None:
        """Write monitor ``m``'s state (after this step) into row ``r`` of the new arrays
        (and of the windows ending with this step's slot)."""
        st = m.state
        vals: dict[str, Any] = {
            "base": st.base, "healthy": st.healthy, "spread": st.spread,
            "loss_ref": st.loss_ref, "loss": st.loss, "loss_avg": st.loss_avg,
            "lavg": st._loss_lavg, "best": st.best_loss, "last_lg": st.last_lg,
            "last_ll": st.last_ll, "run_max_inc": st.run_max_inc,
            "run_start_lg": st.run_start_lg, "run_start_ll": st.run_start_ll,
            "ubase": st.ubase, "uhealthy": st.uhealthy, "run_len": st.run_len,
            "run_start_step": st.run_start_step, "persist_run": st._persist_run,
            "persist_far": st._persist_far, "confirmed": m.explosion_confirmed,
            "confirmed_at": -1 if m.confirmed_at is None else m.confirmed_at,
            "warned": m._warned_growth, "setback_seen": m._setback_seen,
            "catapult_seen": m._catapult_seen, "nf_seen": m._non_finite_seen,
            "prev_ll": m._prev_ll, "rw_from_ll": m._rewrite_from_ll,
            "rw_from_step": m._rewrite_from_step, "ov_set": m._overshoot is not None,
            "has_prev": bool(m._prev_weights),
        }
        vals.update(zip(("c0", "c1", "c2", "c3", "c4"), m._catapult or [math.nan] * 5,
                        strict=True))
        if m._overshoot is not None:
            vals.update(ov0=m._overshoot[0], ov1=m._overshoot[1], ov2=m._overshoot[2])
        for key, v in vals.items():
            if new[key] is self.s[key]:
                new[key] = new[key].copy()
            new[key][r] = v
        self.l0[r] = st.initial_loss
        if st._warm:
            self.warm[0, r, :len(st._warm)] = st._warm
            self.warm[1, r, :len(st._warm_loss)] = st._warm_loss
        end = self.pos + 1
        hist = self.hist
        cnt = min(len(st.recent), RECENT)
        hist[end - RECENT:end, LOSS, r] = math.nan
        if cnt:
            hist[end - cnt:end, LOSS, r] = list(st.recent)
        # (the activation series stays the arrays' own: the largest std of every step)
        for j, name in ((LOG_NORM, "grad_norm"), (FC_LOSS, "loss")):
            h = m.forecaster._hist[name]
            hist[end - WINDOW:end, j, r] = math.nan
            if h:
                hist[end - len(h):end, j, r] = [v for _, v in h]
        rw[r] = m._rewrite_weights or 0.0
        prev[r] = m._prev_weights or 0.0
