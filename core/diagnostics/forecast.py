"""Forecast of float overflow while a run's numbers grow exponentially but are still finite.

Three quantities overflow a float network: the gradient norm, the activations (the largest
layer RMS, usually the logits) and the loss. Norms and activation statistics are accumulated
in float64 from elements of the training dtype, so each series reaches a non-finite value at
``min(finfo(dtype).max, sqrt(finfo(float64).max))`` (an element overflows, or its square does
in the float64 sum). For the loss the series used is the RMS error (``sqrt(mse)``; the
cross-entropy itself grows like the logits), with the same limit.

Over the last few records the log-increments per step are extrapolated. Runaway growth
usually *accelerates* (growing weights sharpen the curvature, so each step's growth factor
exceeds the last): when the increments grow, they are extrapolated geometrically with their
ratio (the geometric mean of consecutive ratios, capped at 10); otherwise the last increment
is held constant, ``steps_to_overflow = log(limit / value) / log(rate)``.

A value of exactly 0 (a float32 cross-entropy of ``-0.0`` once the softmax saturates, a norm
that underflowed) has no log: no growth rate is measured across it (its stand-in
:data:`~core.diagnostics.series.LOG_OF_ZERO` would read as growth of ~e^745 per step). Figures
beyond float range (a real jump of more than e^709 in one step) are reported as +inf.
"""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np

from core.diagnostics.report import Forecast
from core.diagnostics.series import LOG_OF_ZERO, safe_log
from core.spec import TrainingSpec
from core.telemetry import StepRecord

__all__ = ["WINDOW", "OverflowForecaster", "overflow_limit"]

WINDOW = 4
MIN_RATE = math.log(1.02)


def overflow_limit(dtype: str) -> float:
    """The value at which a norm or RMS statistic of a ``dtype`` network becomes non-finite."""
    return min(float(np.finfo(np.dtype(dtype)).max), math.sqrt(float(np.finfo(np.float64).max)))


class OverflowForecaster:
    """Keeps the last few log values of each series; :meth:`forecast` extrapolates them."""

    __slots__ = ("_h", "_limit", "_mse", "_pending", "dtype")

    def __init__(self, spec: TrainingSpec) -> None:
        self.dtype = spec.dtype
        self._limit = math.log(overflow_limit(spec.dtype))
        self._mse = spec.loss == "mse"
        self._h: dict[str, deque[tuple[int, float]]] = {
            name: deque(maxlen=WINDOW) for name in ("grad_norm", "activation", "loss")
        }
        # (step, log norm, largest activation std, log loss) of the records fed since the
        # series were last read: their logs are taken when a forecast needs them
        self._pending: deque[tuple[int, float, float, float]] = deque(maxlen=WINDOW)

    @property
    def _hist(self) -> dict[str, deque[tuple[int, float]]]:
        """The last WINDOW (step, log value) of each series."""
        if self._pending:
            h = self._h
            for step, lg, act, ll in self._pending:
                h["grad_norm"].append((step, lg))
                h["activation"].append((step, safe_log(act)))
                h["loss"].append((step, 0.5 * ll if self._mse else ll))
            self._pending.clear()
        return self._h

    def update(self, record: StepRecord, lg: float, growing: bool, act: float | None = None,
               ll: float | None = None) -> None:
        """Feed one finite record (``lg`` = log of its global gradient norm; ``act``, ``ll``:
        its largest activation std and its log loss when the caller has them)."""
        if act is None:
            act = 0.0
            for lr in record.layers:
                if lr.act_std is not None and lr.act_std > act:
                    act = lr.act_std
        if ll is None:
            ll = safe_log(record.loss)
        self._pending.append((record.step, lg, act, ll))

    def _zero(self, name: str) -> float:
        """The stand-in for log(0) in the series ``name`` (the loss series is halved for MSE)."""
        return 0.5 * LOG_OF_ZERO if name == "loss" and self._mse else LOG_OF_ZERO

    def rates(self) -> dict[str, float]:
        """Current log growth rate per step of each series (0 when it is not growing)."""
        out: dict[str, float] = {}
        for name, h in self._hist.items():
            out[name] = _rate(h, self._zero(name))
        return out

    def forecast(self, step: int) -> Forecast | None:
        """The earliest predicted overflow among the growing series, or None."""
        best: tuple[float, str, float, float, float] | None = None
        for name, h in self._hist.items():
            rate = _rate(h, self._zero(name))
            if rate <= MIN_RATE or not h:
                continue
            value = h[-1][1]
            if not math.isfinite(value):
                continue
            acc = _acceleration(h)
            steps = _steps_to(self._limit - value, rate, acc)
            if best is None or steps < best[0]:
                best = (steps, name, value, rate, acc)
        if best is None:
            return None
        steps, name, value, rate, acc = best
        shown = _exp(2 * value) if name == "loss" and self._mse else _exp(value)
        growth = _exp(rate)
        predicted = step + math.ceil(steps)
        label = {"grad_norm": "the gradient norm", "activation": "the activations",
                 "loss": "the loss"}[name]
        return Forecast(
            dtype=self.dtype,  # type: ignore[arg-type]
            series=name,
            made_at_step=step,
            value=shown,
            overflow_at=_exp(self._limit),
            growth_per_step=growth,
            acceleration=acc,
            steps_to_overflow=steps,
            predicted_overflow_step=predicted,
            message=(f"Growing x{growth:.3g} per step"
                     + (f" and accelerating (x{acc:.2g} per step in log terms)" if acc > 1 else "")
                     + f", {label} would overflow {self.dtype} in ~{steps:.0f} steps "
                     f"(step ~{predicted})."),
        )


def _acceleration(h: deque[tuple[int, float]]) -> float:
    """Geometric mean ratio of consecutive per-step log increments (1 = steady growth)."""
    pts = list(h)
    incs = [(v1 - v0) / max(1, s1 - s0) for (s0, v0), (s1, v1) in itertools.pairwise(pts)]
    if len(incs) < 2 or any(not (i > 0) for i in incs):
        return 1.0
    ratios = [b / a for a, b in itertools.pairwise(incs)]
    acc = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    return min(10.0, max(1.0, acc))


def _steps_to(remaining: float, rate: float, acc: float) -> float:
    """Steps until the cumulative log growth reaches ``remaining`` (increments x ``acc``)."""
    if remaining <= 0:
        return 0.0
    if acc <= 1.0 + 1e-9:
        return remaining / rate
    total, inc, n = 0.0, rate, 0
    while total < remaining and n < 100_000:
        inc *= acc
        total += inc
        n += 1
    return float(n)


def _rate(h: deque[tuple[int, float]], zero: float) -> float:
    """The last per-step log increment if the series rose over the window and over its last
    step; 0 otherwise, or when one of those values is non-finite or ``zero`` (log 0)."""
    if len(h) < 2:
        return 0.0
    (s0, v0), (s1, v1) = h[0], h[-1]
    (sp, vp) = h[-2]
    if not all(math.isfinite(v) and v != zero for v in (v0, v1, vp)):
        return 0.0
    window = (v1 - v0) / max(1, s1 - s0)
    last = (v1 - vp) / max(1, s1 - sp)
    if window <= 0 or last <= 0:
        return 0.0
    return last


def _exp(x: float) -> float:
    """``math.exp``, +inf beyond float range."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
