"""gradwatch core: NumPy back-propagation with per-layer gradient telemetry."""

from core.spec import SpecLimits, TrainingSpec

__all__ = ["SpecLimits", "TrainingSpec"]
