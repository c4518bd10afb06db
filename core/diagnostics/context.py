"""What every offline detector reads and the thresholds they judge it by.

:class:`Context` holds a run's records as columns, the online monitor replayed over them and
the data's reference levels; the thresholds are stated where they are defined, with the
reason for each (none is specific to a scenario); :func:`log_of` and :func:`segment` are the
column helpers the detectors share. Re-exported by :mod:`core.diagnostics.detectors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.diagnostics.reference import DataScale
from core.diagnostics.replay import Replay
from core.diagnostics.series import RunSeries
from core.spec import TrainingSpec
from core.telemetry import NonFiniteEvent, StepRecord

__all__ = [
    "CHANCE_MARGIN",
    "DATA_SCALE_HIGH",
    "DATA_SCALE_LOW",
    "FLAT_IMPROVEMENT",
    "FORWARD_GAIN",
    "LOSS_DIVERGENCE",
    "LOST_FACTOR",
    "LOST_TAIL",
    "LOST_WINDOW",
    "UNITS_CRITICAL",
    "UNITS_WARN",
    "UPDATE_RATIO_HIGH",
    "UPDATE_RATIO_REWRITE",
    "VANISHING_RATIO",
    "Context",
    "log_of",
    "segment",
]

# --- thresholds (why each value) --------------------------------------------------------------
# A run that lost its progress for good is an explosion even if its growth was too irregular
# for the monitor: it had made an order of magnitude of progress (the best, the lowest median
# over windows of LOST_WINDOW of the steps, <= initial / LOST_FACTOR) and the loss ends (median
# of the last LOST_TAIL of the steps) above the initial loss or back at the chance level. Step-based windows read the same
# on a thinned history.
LOST_TAIL = 0.05
LOST_WINDOW = 0.01
LOST_FACTOR = 10.0
# Update-to-weight ratio: ~1e-3 is the classic healthy value (Karpathy's rule of thumb); 0.1
# means every step rewrites a tenth of the weights; >= 0.5 rewrites them outright.
UPDATE_RATIO_HIGH = 0.1
UPDATE_RATIO_REWRITE = 0.5
# Vanishing: a layer's relative gradient ||dW||/||W|| >= 1000x below the output layer's means
# it learns three orders of magnitude slower than the layer the loss reaches directly.
VANISHING_RATIO = 1e-3
# Dead / saturated units: half a layer is a warning; 90% leaves the layer without signal.
UNITS_WARN = 0.5
UNITS_CRITICAL = 0.9
# Flat loss: < 2% improvement from the first to the last records, or ending within 10% of
# the chance-level loss (what the best constant prediction scores).
FLAT_IMPROVEMENT = 0.02
CHANCE_MARGIN = 0.9
# Forward amplification at init: activations growing >= 2x per layer (geometric mean).
FORWARD_GAIN = 2.0
# Loss divergence: the loss >= 100x its initial level (two orders of magnitude).
LOSS_DIVERGENCE = 100.0
# Data scale: inputs or regression targets with RMS >= 10 (or inputs <= 0.01) are unscaled.
DATA_SCALE_HIGH = 10.0
DATA_SCALE_LOW = 0.01


@dataclass
class Context:
    """What every offline detector reads."""

    spec: TrainingSpec
    records: list[StepRecord]
    s: RunSeries
    replay: Replay
    scale: DataScale | None
    stop_reason: str | None
    first_non_finite: NonFiniteEvent | None

    @property
    def chance(self) -> float | None:
        return self.scale.chance_loss if self.scale is not None else None


# ------------------------------------------------------------------------------ helpers
def log_of(x: np.ndarray) -> np.ndarray:
    """Natural log with NaN for values <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.where(x > 0, x, np.nan))


def segment(s: RunSeries, frac: float, tail: bool, minimum: int = 3) -> slice:
    n = len(s)
    k = min(n, max(minimum, math.ceil(frac * n)))
    return slice(n - k, n) if tail else slice(0, k)
