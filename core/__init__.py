"""gradwatch core: NumPy back-propagation with per-layer gradient telemetry.

The public API (see DESIGN.md "Contracts")::

    import core
    spec = core.TrainingSpec.model_validate({"data": {"source": "synthetic", "name": "spirals"}})
    trainer = core.Trainer(spec)
    result = trainer.run()              # core.TrainingResult: per-step, per-layer records
    report = core.diagnose(result)      # verdict, findings, ranked fixes as spec patches
    core.preflight(spec)                # risk analysis without training
    core.Model.from_trainer(trainer).save("model.npz")
    core.load_model("model.npz").predict(X)   # raw inputs in, probabilities/outputs out
"""

from core.diagnostics import DiagnosticReport, Monitor, PreflightReport, diagnose, preflight
from core.model_io import Model, ModelFileError, load_model, save_model
from core.spec import SpecLimits, TrainingSpec
from core.telemetry import (
    BlockSink,
    EpochRecord,
    LayerRecord,
    MemorySink,
    NonFiniteEvent,
    Sink,
    StepBlock,
    StepRecord,
)
from core.trainer import Trainer, TrainingResult

__all__ = [
    "BlockSink",
    "DiagnosticReport",
    "EpochRecord",
    "LayerRecord",
    "MemorySink",
    "Model",
    "ModelFileError",
    "Monitor",
    "NonFiniteEvent",
    "PreflightReport",
    "Sink",
    "SpecLimits",
    "StepBlock",
    "StepRecord",
    "Trainer",
    "TrainingResult",
    "TrainingSpec",
    "diagnose",
    "load_model",
    "preflight",
    "save_model",
]
