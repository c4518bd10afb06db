"""The diagnosis as data: findings, recommendations, forecasts and the two reports.

These pydantic models are the HTTP API's response models too. Evidence numbers may be NaN or
+-Inf (they are data here): JSON carries them as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.telemetry import JsonFloat

__all__ = [
    "Action",
    "DiagnosticReport",
    "Evidence",
    "Finding",
    "FindingKind",
    "Forecast",
    "LayerPreflight",
    "LayerSummary",
    "PreflightReport",
    "Recommendation",
    "RiskLevel",
    "Severity",
    "Verdict",
    "fmt",
]

Verdict = Literal["healthy", "exploding", "vanishing", "unstable", "stalled"]
Severity = Literal["info", "warning", "critical"]
RiskLevel = Literal["low", "medium", "high", "critical"]
FindingKind = Literal[
    "non_finite",
    "gradient_explosion",
    "gradient_growth",
    "depth_amplification",
    "loss_divergence",
    "high_update_ratio",
    "gradient_spike",
    "oscillation",
    "vanishing_gradients",
    "dead_units",
    "saturated_units",
    "flat_loss",
    "data_scale",
]
Action = Literal[
    "clip_gradients",
    "lower_learning_rate",
    "change_init",
    "batch_norm",
    "change_activation",
    "standardize_data",
    "weight_decay",
    "reset_bias",
    "raise_learning_rate",
    "adam_epsilon",
    "adam_beta2",
    "decay_learning_rate",
    "warmup",
]
Evidence = dict[str, JsonFloat | int | str | None]


def fmt(x: float | int | str | None) -> str:
    """How every message prints a number: 3 significant digits; NaN/Inf as in JSON."""
    if isinstance(x, str):
        return x
    if x is None or x != x:
        return "NaN"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return f"{x:.3g}"


class _Report(BaseModel):
    """Base: NaN/Inf serialise as the strings "NaN"/"Infinity"/"-Infinity"."""

    model_config = ConfigDict(ser_json_inf_nan="strings")


class Finding(_Report):
    """One thing a detector saw, at a step, in some layers, with the numbers behind it."""

    kind: FindingKind = Field(description="What was detected.")
    severity: Severity = Field(description="`critical` findings decide the verdict.")
    step: int | None = Field(description="First step the finding applies to (steps count from 0).")
    layers: list[int] = Field(default_factory=list,
                              description="Layers involved (0 = first hidden layer; last = output).")
    evidence: Evidence = Field(default_factory=dict,
                               description="The measured numbers (may be NaN/Infinity).")
    message: str = Field(description="Plain-language explanation.")


class Recommendation(_Report):
    """A fix, with why, and the RFC 7396 merge patch on the job's spec that applies it."""

    action: Action
    rationale: str
    spec_patch: dict[str, Any] = Field(
        description="RFC 7396 JSON merge patch on the job's spec (arrays replace whole)."
    )
    expected_effect: str | None = None


class Forecast(_Report):
    """Steps left until float overflow while a quantity grows exponentially but is finite."""

    dtype: Literal["float32", "float64"]
    series: str = Field(description="The quantity that overflows first: `grad_norm`, `loss` "
                                    "or `activation`.")
    made_at_step: int = Field(description="The last step the forecast uses.")
    value: JsonFloat = Field(description="The series' value at `made_at_step`.")
    overflow_at: JsonFloat = Field(description="The dtype's largest finite value.")
    growth_per_step: JsonFloat = Field(description="Multiplicative growth over the last step (> 1).")
    acceleration: JsonFloat = Field(1.0, description="Ratio of consecutive log growth increments "
                                                 "used to extrapolate (1: steady growth).")
    steps_to_overflow: JsonFloat = Field(description="Steps until the value reaches overflow_at, "
                                                 "extrapolating the recent (possibly "
                                                 "accelerating) growth.")
    predicted_overflow_step: int
    actual_non_finite_step: int | None = Field(
        None, description="When the run did hit a non-finite value (hindsight), if it did."
    )
    message: str


class LayerSummary(_Report):
    """Per-layer figures over the analysed steps."""

    layer: int
    activation: str
    baseline_grad_norm: JsonFloat = Field(
        description="Median pre-clip gradient norm of this layer over the healthy steps (before "
                    "the onset, the global norm inside the monitor's normal band): the same "
                    "steps whose global median is the clipping recommendation's typical norm."
    )
    peak_grad_norm: JsonFloat
    peak_step: int
    final_grad_norm: JsonFloat
    update_ratio: JsonFloat | None = Field(
        None, description="Median ||update|| / ||weight|| over the healthy steps."
    )
    dead_fraction: JsonFloat | None = None
    saturated_fraction: JsonFloat | None = None


class DiagnosticReport(_Report):
    """Did gradients explode, where, when, why, and what to change."""

    verdict: Verdict
    summary: str
    first_bad_step: int | None = Field(description="Onset of the problem that decides the verdict.")
    final: bool = Field(description="False while the run is still in progress (provisional).")
    stop_reason: str | None = None
    steps_analyzed: int = Field(description="Number of step records analysed.")
    last_step: int | None = None
    findings: list[Finding] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)
    forecast: Forecast | None = None
    layers: list[LayerSummary] = Field(default_factory=list)


class LayerPreflight(_Report):
    """One layer's predicted behaviour at initialisation."""

    layer: int
    fan_in: int
    fan_out: int
    activation: str
    init: str
    weight_std: JsonFloat = Field(description="Standard deviation of the initial weights.")
    forward_gain: JsonFloat = Field(
        description="Predicted ratio of this layer's output RMS to its input RMS."
    )
    backward_gain: JsonFloat = Field(
        description="Predicted ratio of the backpropagated gradient RMS at this layer's input "
                    "to the one at its output."
    )
    predicted_grad_norm_ratio: JsonFloat = Field(
        description="Predicted weight-gradient norm relative to the output layer's."
    )
    measured_grad_norm_ratio: JsonFloat | None = Field(
        None, description="The same measured by one probe forward/backward pass."
    )
    measured_grad_norm: JsonFloat | None = None
    measured_update_ratio: JsonFloat | None = Field(
        None, description="||first update|| / ||weight|| the optimizer would take on the probe batch."
    )
    activation_rms: JsonFloat | None = Field(None, description="Predicted RMS of the layer's output.")


class PreflightReport(_Report):
    """What a spec will cost and how likely its gradients are to explode, before training."""

    parameter_count: int
    flops_per_step: int = Field(description="Forward + backward floating-point operations per "
                                            "optimizer step (multiply-adds count 2).")
    flops_total: int
    total_steps: int
    memory_bytes: int = Field(description="Estimated peak working memory: parameters, gradients, "
                                          "optimizer state, activations, data.")
    memory_breakdown: dict[str, int]
    predicted_amplification: JsonFloat = Field(
        description="Predicted first-layer / output-layer weight-gradient norm ratio at init."
    )
    measured_amplification: JsonFloat | None = Field(
        None, description="The same measured on one probe batch."
    )
    predicted_depth_gain: JsonFloat = Field(
        description="Predicted growth of the backpropagated gradient RMS from the output layer "
                    "to the first layer at init (product of the per-layer backward gains; ~1 "
                    "is healthy, >> 1 explodes, << 1 vanishes)."
    )
    predicted_output_rms: JsonFloat
    layers: list[LayerPreflight]
    risk: RiskLevel
    risks: list[Finding] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)
    summary: str
