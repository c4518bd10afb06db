"""A run's loss levels over its steps, and whether it lost its progress for good.

The initial, best and final losses (:func:`loss_levels`), read over windows of the steps so
that a thinned history reads the same, and :func:`lost_progress`, the hindsight rule that
calls a run exploded when it made an order of magnitude of progress and then lost it (see
``LOST_*`` in :mod:`core.diagnostics.context`). Re-exported by :mod:`core.diagnostics.detectors`.
"""

from __future__ import annotations

import math

import numpy as np

from core.diagnostics.context import CHANCE_MARGIN, LOST_FACTOR, LOST_TAIL, LOST_WINDOW, Context
from core.diagnostics.medians import median, window_medians
from core.diagnostics.series import RunSeries

__all__ = [
    "initial_loss",
    "loss_levels",
    "lost_progress",
]


def _step_windows(s: RunSeries, frac: float) -> np.ndarray:
    """First record index of each consecutive window of ``frac`` of the run's steps (>= 5
    steps); a window runs to the next one's first record."""
    if len(s) == 0:
        return np.empty(0, dtype=np.int64)
    span = int(s.step[-1] - s.step[0]) + 1
    width = max(5, math.ceil(frac * span))  # a median of fewer than 5 steps is one batch
    bins = (s.step - s.step[0]) // width
    return np.concatenate(([0], np.flatnonzero(np.diff(bins)) + 1))


def initial_loss(s: RunSeries) -> float:
    """The initial level of :func:`loss_levels`."""
    first = np.flatnonzero(s.step < s.step[0] + 5)  # steps 0-4: the monitor's L0
    if first.size < 3:
        first = np.arange(min(3, len(s)))
    return median(s.loss[first])


def _levels(s: RunSeries) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """:func:`loss_levels`, with the windows' first records and medians."""
    starts = _step_windows(s, LOST_WINDOW)
    initial = initial_loss(s)
    meds = window_medians(s.loss, starts)
    best = float(np.nanmin(meds)) if np.isfinite(meds).any() else math.nan
    tail = s.step >= s.step[-1] - LOST_TAIL * (s.step[-1] - s.step[0])
    if tail.sum() < 3:
        tail = np.arange(len(s)) >= len(s) - 3
    return initial, best, median(s.loss[tail]), starts, meds


def loss_levels(s: RunSeries) -> tuple[float, float, float]:
    """(initial, best, final) loss: the median over steps 0-4 (the monitor's ``initial_loss``;
    at least 3 records on a thinned history), the lowest median over windows of 1% of the steps, and the
    median over the last 5% of the steps (at least 3 records)."""
    initial, best, final, _, _ = _levels(s)
    return initial, best, final


def lost_progress(ctx: Context) -> int | None:
    """Index where the run started to lose its progress for good, if it did (see LOST_*)."""
    s = ctx.s
    if len(s) < 10:
        return None
    initial, best, final, starts, meds = _levels(s)
    chance = ctx.chance
    lost = final > initial and initial >= LOST_FACTOR * best
    # back at the chance level after getting an order of magnitude below it (a run that
    # started far above chance, e.g. saturated, and only reached it has lost nothing)
    lost |= (chance is not None and final >= CHANCE_MARGIN * chance
             and min(initial, chance) >= LOST_FACTOR * best)
    if not lost:
        return None
    # back from the end over the windows whose median stays above the harm level; the onset
    # is the first record above it in the earliest of them
    level = best + 0.5 * (initial - best)
    k = len(starts)
    while k > 0 and meds[k - 1] > level:
        k -= 1
    start = int(starts[k]) if k < len(starts) else len(s) - 1
    above = np.flatnonzero(s.loss[start:] > level)
    return start + int(above[0]) if above.size else start
