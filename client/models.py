"""Typed views of the API's resources. Unknown fields are kept (servers may add fields).

Floats accept the API's ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` strings and hold the real
non-finite values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TERMINAL",
    "AxisValue",
    "Comparison",
    "Dataset",
    "Diagnosis",
    "Event",
    "Finding",
    "GradientHistory",
    "Job",
    "JobPage",
    "MetricsHistory",
    "Prediction",
    "Preflight",
    "Progress",
    "Recommendation",
    "SeriesArrays",
    "StabilityMap",
    "StabilityRow",
    "Sweep",
    "SweepMember",
    "SweepPage",
    "SweepProgress",
    "SweepSummary",
]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: one value of a sweep axis (``bool`` first, so ``True`` never reads as ``1``)
AxisValue = bool | int | float | str


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(_Model):
    step: int
    total_steps: int
    fraction: float = 0.0


class LatestFigures(_Model):
    step: int
    loss: float
    grad_norm: float
    clipped_grad_norm: float | None = None
    lr: float | None = None
    layer_grad_norms: list[float] = Field(default_factory=list)


class Job(_Model):
    """A job (``spec`` is None in list items)."""

    id: str
    name: str | None = None
    status: JobStatus
    verdict: str | None = None
    stop_reason: str | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress | None = None
    latest: LatestFigures | None = None
    first_non_finite: dict[str, Any] | None = None
    runtime_seconds: float | None = None
    parent_id: str | None = None
    parent_sweep_id: str | None = None
    #: the sweep member it was launched like (``launch_sweep``): ``sweep_id``, ``member``,
    #: ``job_id``, ``values``, ``recommended``, ``spec_patch``; None for any other job
    launched_from: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    repair: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobPage(_Model):
    items: list[Job]
    next_cursor: str | None = None


class Finding(_Model):
    kind: str
    severity: str
    step: int | None = None
    layers: list[int] = Field(default_factory=list)
    evidence: dict[str, Any] = Field(default_factory=dict)
    message: str = ""


class Recommendation(_Model):
    action: str
    rationale: str = ""
    spec_patch: dict[str, Any] = Field(default_factory=dict)
    expected_effect: str | None = None


class Diagnosis(_Model):
    verdict: str
    summary: str
    first_bad_step: int | None = None
    final: bool = True
    stop_reason: str | None = None
    findings: list[Finding] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)


class Preflight(_Model):
    """The preflight report; see the server's schema for every field."""


class RunFigures(_Model):
    job_id: str
    status: str
    verdict: str | None = None
    final_loss: float | None = None
    max_grad_norm: float | None = None
    first_non_finite_step: int | None = None


class Comparison(_Model):
    original: RunFigures
    repair: RunFigures
    spec_patch: dict[str, Any] | None = None
    summary: str


class Dataset(_Model):
    """An uploaded data set; ``spec_data`` is what to put in a spec's ``data``."""

    id: str
    source: str = "uploaded"
    name: str
    task: Literal["classification", "regression"]
    format: str
    n_samples: int
    n_features: int
    n_classes: int | None = None
    n_targets: int = 1
    dtype: str | None = None
    feature_names: list[str] | None = None
    target_name: str | None = None
    sha256: str | None = None
    upload_bytes: int | None = None
    stored_bytes: int | None = None
    created_at: str | None = None
    spec_data: dict[str, Any] = Field(default_factory=dict)


class Prediction(_Model):
    """A model's answer for rows of X: classification, the class per row and (for a
    probabilistic loss) the probabilities; regression, each row's outputs. NaN/±Inf outputs
    of an exploded model are real floats."""

    job_id: str
    predictions: list[int] | list[list[float]]
    probabilities: list[list[float]] | None = None
    model: dict[str, Any] = Field(default_factory=dict)

    def as_array(self) -> np.ndarray:
        """``predictions`` as a NumPy array (int64 labels, or float64 rows)."""
        dtype = np.int64 if self.model.get("task") == "classification" else np.float64
        return np.asarray(self.predictions, dtype=dtype)


class SweepProgress(_Model):
    members_done: int
    members: int
    step: int = 0
    total_steps: int = 0
    fraction: float = 0.0


class SweepMember(_Model):
    """One grid point of a sweep: its job, its axis values (path -> value) and what its run
    gave (``status`` is ``deleted`` once its job was deleted on its own)."""

    index: int
    job_id: str
    values: dict[str, AxisValue]
    status: JobStatus | Literal["deleted"]
    verdict: str | None = None
    stop_reason: str | None = None
    first_bad_step: int | None = None
    peak_to_baseline: float | None = None
    final_loss: float | None = None
    predicted_risk: str | None = None


class Sweep(_Model):
    """A sweep: the base spec, its axes and one member (a job) per grid point; ``status`` and
    ``progress`` follow from the member jobs."""

    id: str
    name: str | None = None
    status: JobStatus
    created_at: str | None = None
    progress: SweepProgress | None = None
    axes: list[dict[str, Any]] = Field(default_factory=list)
    spec: dict[str, Any] | None = None
    members: list[SweepMember] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def paths(self) -> list[str]:
        """The axes' spec paths, in order."""
        return [str(a["path"]) for a in self.axes]


class SweepSummary(_Model):
    """A sweep as the list gives it: no members and no spec (``sweep(id)`` for them), its
    members' verdict counts (verdict -> members)."""

    id: str
    name: str | None = None
    status: JobStatus
    created_at: str | None = None
    tenant: str | None = None
    progress: SweepProgress | None = None
    axes: list[dict[str, Any]] = Field(default_factory=list)
    member_count: int = 0
    verdicts: dict[str, int] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class SweepPage(_Model):
    items: list[SweepSummary]
    next_cursor: str | None = None


class StabilityRow(_Model):
    """One row (``y`` value) of a stability map: the largest healthy and the smallest
    exploding ``x``, measured, and the smallest ``x`` preflight predicts to explode."""

    y: AxisValue
    largest_healthy: AxisValue | None = None
    smallest_exploding: AxisValue | None = None
    smallest_predicted_exploding: AxisValue | None = None


class StabilityMap(_Model):
    """A sweep's verdicts over axes ``x`` (columns) and ``y`` (rows), the other axes held at
    ``fixed``: ``verdict[j][i]``, ``risk[j][i]`` (preflight's) and ``member[j][i]`` (the
    member's index) belong to ``y_values[j]``, ``x_values[i]`` (None: no finished member);
    ``rows`` the boundary per row; ``calibration`` how often preflight agreed."""

    x: str
    y: str
    x_values: list[AxisValue]
    y_values: list[AxisValue]
    fixed: dict[str, AxisValue] = Field(default_factory=dict)
    verdict: list[list[str | None]]
    risk: list[list[str | None]] = Field(default_factory=list)
    member: list[list[int | None]] = Field(default_factory=list)
    rows: list[StabilityRow] = Field(default_factory=list)
    calibration: dict[str, Any] = Field(default_factory=dict)

    def verdict_at(self, x: AxisValue, y: AxisValue) -> str | None:
        """The verdict of the cell at ``x``, ``y`` (None: no finished member there);
        ValueError when either is not one of its axis's values."""
        return self.verdict[self.y_values.index(y)][self.x_values.index(x)]


@dataclass(frozen=True)
class SeriesArrays:
    """One series as NumPy arrays: ``values[i]`` at ``steps[i]``; NaN/±Inf restored, a value
    that was not recorded (null) is NaN too."""

    steps: np.ndarray
    values: np.ndarray

    def __repr__(self) -> str:
        span = f", steps {self.steps[0]}..{self.steps[-1]}" if len(self.steps) else ""
        return f"SeriesArrays({len(self.steps)} points{span})"


def _points(series: Any) -> int:
    return max((len(s.steps) for s in series), default=0)


def _arrays(series: dict[str, Any]) -> SeriesArrays:
    values = [np.nan if v is None else float(v) for v in series.get("values", [])]
    return SeriesArrays(np.asarray(series.get("steps", []), dtype=np.int64),
                        np.asarray(values, dtype=np.float64))


@dataclass(frozen=True)
class GradientHistory:
    """Per layer, per series name (``grad_norm``, ...) the arrays; plus how it was sampled."""

    job_id: str
    layers: dict[int, dict[str, SeriesArrays]]
    downsampled: bool
    bucket_size: int | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GradientHistory:
        layers = {int(ly["layer"]): {name: _arrays(s) for name, s in ly["series"].items()}
                  for ly in body.get("layers", [])}
        return cls(body["job_id"], layers, bool(body.get("downsampled")),
                   body.get("bucket_size"), body)

    def __repr__(self) -> str:
        """Its shape, not its numbers (the raw body holds every point: thousands of them)."""
        names = sorted({name for series in self.layers.values() for name in series})
        points = _points(s for series in self.layers.values() for s in series.values())
        return (f"GradientHistory(job_id={self.job_id!r}, layers={list(self.layers)}, "
                f"series={names}, points={points}, downsampled={self.downsampled}, "
                f"bucket_size={self.bucket_size})")

    @property
    def next_cursor(self) -> str | None:
        """The next page's cursor of a paged read (None: this was the last page)."""
        cursor: str | None = self.raw.get("next_cursor")
        return cursor


@dataclass(frozen=True)
class MetricsHistory:
    """Per series name (``loss``, ``grad_norm``, ``clipped_grad_norm``, ``lr``) the arrays,
    and the per-epoch columns as arrays."""

    job_id: str
    series: dict[str, SeriesArrays]
    epochs: dict[str, np.ndarray]
    downsampled: bool
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> MetricsHistory:
        epochs = {k: np.asarray([np.nan if v is None else float(v) for v in col])
                  for k, col in (body.get("epochs") or {}).items()}
        return cls(body["job_id"], {k: _arrays(s) for k, s in body.get("series", {}).items()},
                   epochs, bool(body.get("downsampled")), body)

    def __repr__(self) -> str:
        """Its shape, not its numbers (the raw body holds every point: thousands of them)."""
        epochs = max((len(col) for col in self.epochs.values()), default=0)
        return (f"MetricsHistory(job_id={self.job_id!r}, series={list(self.series)}, "
                f"points={_points(self.series.values())}, epochs={epochs}, "
                f"downsampled={self.downsampled})")

    @property
    def next_cursor(self) -> str | None:
        """The next page's cursor of a paged read (None: this was the last page)."""
        cursor: str | None = self.raw.get("next_cursor")
        return cursor


@dataclass(frozen=True)
class Event:
    """One server-sent event: its id, type (``snapshot``, ``status``, ``progress``,
    ``alert``, ...) and JSON data."""

    id: int | None
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        """True for the event after which the job's stream ends."""
        if self.event == "snapshot":
            return self.data.get("status") in TERMINAL
        return self.event == "status" and bool(self.data.get("terminal"))
