"""Gradient-explosion diagnosis: detectors, the online monitor, recommendations, preflight."""

from core.diagnostics.diagnose import diagnose
from core.diagnostics.monitor import Monitor
from core.diagnostics.patch import apply_merge_patch, create_merge_patch
from core.diagnostics.preflight import preflight
from core.diagnostics.report import (
    DiagnosticReport,
    Finding,
    Forecast,
    LayerPreflight,
    LayerSummary,
    PreflightReport,
    Recommendation,
)

__all__ = [
    "DiagnosticReport",
    "Finding",
    "Forecast",
    "LayerPreflight",
    "LayerSummary",
    "Monitor",
    "PreflightReport",
    "Recommendation",
    "apply_merge_patch",
    "create_merge_patch",
    "diagnose",
    "preflight",
]
