"""The online monitor replayed over a run's records: what it saw, record by record.

:func:`replay_monitor` feeds every record to a real :class:`~core.diagnostics.monitor.Monitor`.
Given the records' columns (:class:`~core.diagnostics.series.RunSeries`, the same records in
the same order), it computes each record's figures for all records at once — the logs of its
global norm, loss and update norm, its largest update-to-weight ratio and activation std, in
the monitor's own order of operations (sums and maxima layer after layer, logs through
:mod:`math`) — and for a finite record calls the monitor's :meth:`~Monitor.advance` with them,
then :meth:`~Monitor.judge` unless the monitor is :meth:`~Monitor.quiet`: the same state, the
same alerts as :meth:`~Monitor.observe`, without its per-record scan of the layers. Any other
record (non-finite, or records the columns do not match) goes through ``observe`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from core.diagnostics.monitor import Monitor
from core.diagnostics.report import Finding, Forecast
from core.diagnostics.series import RunSeries, safe_log
from core.spec import TrainingSpec
from core.telemetry import StepRecord

__all__ = ["Figures", "Replay", "record_figures", "replay_monitor"]


@dataclass
class Replay:
    """The online monitor replayed over the recorded steps (what it saw, step by step)."""

    base: np.ndarray  # log baseline B after each record (NaN for non-finite records)
    upper: np.ndarray  # log upper band edge after each record
    healthy: np.ndarray  # log healthy scale H after each record
    confirmed_at: int | None = None
    rule: str | None = None
    run_start_step: int | None = None
    alerts: list[Finding] = field(default_factory=list)
    spike_alerts: list[Finding] = field(default_factory=list)  # setback / catapult warnings
    forecast: Forecast | None = None  # the forecast made when explosion was confirmed
    first_forecast: Forecast | None = None  # the first forecast made while growth was seen


_NONE: list[Finding] = []


def replay_monitor(spec: TrainingSpec, records: Sequence[StepRecord],
                   series: RunSeries | None = None) -> Replay:
    """Run :class:`Monitor` over the records; keep its band per record and its verdict.
    ``series``: the records' columns, if the caller has them (a faster replay, same result)."""
    mon = Monitor(spec)
    st = mon.state
    n = len(records)
    base: list[float] = [math.nan] * n
    upper: list[float] = [math.nan] * n
    healthy: list[float] = [math.nan] * n
    rep = Replay(base=np.empty(0), upper=np.empty(0), healthy=np.empty(0))
    figures = record_figures(series, records) if series is not None else None
    fast, lg, ll, lu, rewrite, act, weights = figures or Figures([False] * n, [], [], [], [], [], [])
    observe, advance, quiet, judge = mon.observe, mon.advance, mon.quiet, mon.judge
    dead = False  # a non-finite value was seen (by observe: the fast records are finite)
    for i, r in enumerate(records):
        if fast[i] and not dead:
            advance(r, lg[i], ll[i], lu[i], rewrite[i], act[i], weights[i])
            new = _NONE if quiet() else judge(r)
        else:
            new = observe(r)
            dead = mon.non_finite_seen
        if st.n:
            base[i], upper[i], healthy[i] = st.base, st.upper, st.healthy
        if rep.first_forecast is None and st.run_len >= 2:
            rep.first_forecast = mon.forecaster.forecast(r.step)
        for a in new:
            rep.alerts.append(a)
            if a.kind == "gradient_spike":
                rep.spike_alerts.append(a)
            if a.kind == "gradient_explosion" and rep.confirmed_at is None:
                rep.confirmed_at = r.step
                rule = a.evidence.get("rule")
                rep.rule = rule if isinstance(rule, str) else None
                start = a.evidence.get("growth_started_at")
                rep.run_start_step = start if isinstance(start, int) else None
                rep.forecast = mon.forecaster.forecast(r.step)
    rep.base = np.array(base, dtype=np.float64)
    rep.upper = np.array(upper, dtype=np.float64)
    rep.healthy = np.array(healthy, dtype=np.float64)
    return rep


class Figures(NamedTuple):
    fast: list[bool]  # finite: advance() with the figures below (else observe())
    lg: list[float]
    ll: list[float]
    lu: list[float]
    rewrite: list[float]
    act: list[float]
    weights: list[list[float]]


def record_figures(s: RunSeries, records: Sequence[StepRecord]) -> Figures | None:
    """(finite?, log norm, log loss, log update norm, largest update ratio, largest activation
    std, weight norms) per record, as :meth:`Monitor.observe` computes them; None unless the
    columns are these records (same steps, the usual layers)."""
    if (not s.regular or len(s) != len(records) or s.n_layers == 0
            or s.step.tolist() != [r.step for r in records]):
        return None
    w, u = s.layer["weight_norm"], s.layer["update_norm"]
    a, has_a = s.layer["act_std"], s.present["act_std"]
    finite = (np.isfinite(s.loss) & np.isfinite(s.grad_norm)
              & np.all(np.isfinite(w) & np.isfinite(u) & np.isfinite(s.layer["grad_norm"])
                       & (~has_a | np.isfinite(a)), axis=1))
    n = len(s)
    usq = np.zeros(n)
    rewrite = np.zeros(n)
    act = np.zeros(n)
    with np.errstate(all="ignore"):
        for k in range(s.n_layers):  # layer after layer, as the monitor's loop
            usq = usq + u[:, k] * u[:, k]
            r = u[:, k] / w[:, k]
            rewrite = np.where((w[:, k] > 0) & (r > rewrite), r, rewrite)
            act = np.where(has_a[:, k] & (a[:, k] > act), a[:, k], act)
    return Figures(finite.tolist(), list(map(safe_log, s.grad_norm.tolist())),
                    list(map(safe_log, s.loss.tolist())), [0.5 * safe_log(v) for v in usq.tolist()],
                    rewrite.tolist(), act.tolist(), w.tolist())
