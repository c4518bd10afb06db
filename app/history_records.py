"""A job's whole stored history read back: as the trainer's records, for a diagnosis
(:func:`stored_history`, thinned for very long runs) and for tests (:func:`recorded_steps`),
and as the run's key figures, for a comparison (:func:`run_figures`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.downsampling import LAYER_METRICS, STEP_METRICS
from app.history_store import ChunkData
from app.history_view import HistoryView
from app.lifecycle import TERMINAL
from app.models import Job
from app.repositories import EventRepository, HistoryRepository
from app.settings import Settings
from core.spec import TrainingSpec
from core.telemetry import LayerRecord, StepRecord

__all__ = [
    "StoredHistory",
    "recorded_steps",
    "run_figures",
    "stored_history",
]


def run_figures(session: Session, job_id: str) -> dict[str, Any]:
    """Key figures of a run for comparisons: last/min loss, max grad norm and its step."""
    out: dict[str, Any] = {"final_loss": None, "min_loss": None, "max_grad_norm": None,
                           "max_grad_norm_step": None}
    store = HistoryView.of(session, job_id)
    if store is None:
        return out
    parts = [(s, v) for s, v, _, _ in store.all_points([0, 1])]
    if not parts:
        return out
    steps = np.concatenate([p[0] for p in parts])
    arr = np.concatenate([p[1] for p in parts])
    if not steps.size:
        return out
    losses = arr[:, 0]
    out["final_loss"] = float(losses[-1])
    finite = losses[np.isfinite(losses)]
    out["min_loss"] = float(finite.min()) if finite.size else float(losses[0])
    norms = np.where(np.isnan(arr[:, 1]), -np.inf, arr[:, 1])
    i = int(np.argmax(norms))
    out["max_grad_norm"] = float(arr[i, 1])
    out["max_grad_norm_step"] = int(steps[i])
    return out


@dataclass
class StoredHistory:
    """What core.diagnose needs, rebuilt from the database.

    ``alerts`` are the online monitor's findings (their JSON, from the job's ``alert``
    events): the monitor saw every step, the stored records may be thinned by
    ``record_every``, so an explosion shorter than that still reaches the diagnosis.
    """

    spec: TrainingSpec
    steps: list[Any]
    epochs: list[Any]
    stop_reason: str | None
    first_non_finite: Any
    alerts: list[dict[str, Any]] = field(default_factory=list)


def stored_history(session: Session, job: Job, settings: Settings) -> StoredHistory:
    """What :func:`core.diagnose` needs of ``job``, read back (thinned for very long runs)."""
    from core.telemetry import EpochRecord, NonFiniteEvent

    # the alerts of this run: a job re-queued and run again keeps its earlier runs' events
    alerts = [event.data for event in EventRepository(session).of_type(job.id, "alert")
              if event.data.get("attempt", job.attempts) == job.attempts]
    nf = job.first_non_finite
    steps: list[Any] = []
    store = HistoryView.of(session, job.id)
    if store is not None:
        steps = _thinned_records(store, alerts, nf, settings.diagnosis_max_records)
    epochs = [EpochRecord(epoch=e.epoch, step=e.step, train_loss=e.train_loss,
                          val_loss=e.val_loss, val_accuracy=e.val_accuracy,
                          train_accuracy=e.train_accuracy)
              for e in HistoryRepository(session).epochs(job.id)]
    first_nf = NonFiniteEvent(step=nf["step"], layer=nf["layer"], tensor=nf["tensor"],
                              value=nf["value"]) if nf else None
    spec = TrainingSpec.model_validate(job.spec, context={"limits": settings.spec_limits()})
    stop = job.stop_reason if job.status in TERMINAL else None
    if job.status in TERMINAL and stop is None:
        stop = "cancelled" if job.status == "cancelled" else "completed"
    return StoredHistory(spec, steps, epochs, stop, first_nf, alerts)


def recorded_steps(session: Session, job_id: str) -> list[StepRecord]:
    """Every stored step of a job as the trainer's records, in step order."""
    store = HistoryView.of(session, job_id)
    if store is None:
        return []
    return [_record(i, chunk, values[i], present[i], store.n_layers)
            for steps, values, present, chunk in store.all_points(None)
            for i in range(len(steps))]


def _thinned_records(store: HistoryView, alerts: list[dict[str, Any]], nf: dict[str, Any] | None,
                     max_records: int) -> list[StepRecord]:
    """The stored steps as records. A very long run is read thinned (bounded memory and
    time): every stride-th step plus the last stored step, the first non-finite one and every
    step with a monitor alert."""
    n_rows = store.n_steps()
    stride = max(1, -(-n_rows // max_records))
    also: list[int] = []
    if stride > 1:
        also = [a["step"] for a in alerts if isinstance(a.get("step"), int)]
        if nf:
            also.append(nf["step"])
        last = store.last_step()
        if last is not None:
            also.append(last)
    records: list[StepRecord] = []
    for steps, values, present, chunk in store.all_points(None):
        keep = np.flatnonzero((steps % stride == 0) | np.isin(steps, also))
        for i in keep.tolist():
            records.append(_record(i, chunk, values[i], present[i], store.n_layers))
    return records


def _record(i: int, chunk: ChunkData, row: np.ndarray, present: np.ndarray, n_layers: int
            ) -> StepRecord:
    """Row ``i`` of a decoded chunk as the trainer's record (missing statistics: None)."""
    vals: list[Any] = [v if p else None for v, p in zip(row.tolist(), present.tolist(),
                                                         strict=True)]
    n_step, n_metrics = len(STEP_METRICS), len(LAYER_METRICS)
    layers = [LayerRecord(ly, *vals[n_step + ly * n_metrics:n_step + (ly + 1) * n_metrics])
              for ly in range(n_layers)]
    return StepRecord(step=int(chunk.steps[i]), epoch=int(chunk.epochs[i]), loss=vals[0],
                      grad_norm=vals[1], clipped_grad_norm=vals[2], lr=vals[3],
                      clipped=bool(chunk.clipped[i]), layers=layers)
