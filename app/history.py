"""A job's history in the database: the one place that knows its stored format.

Written by the worker's sink (:class:`HistoryWriter`: step rows, layer rows and the rollup
blocks, each block a little-endian float64 array of shape ``(n_metrics, 7)``, see
:class:`app.models.SeriesRollup`) and read back here for the HTTP histories (downsampled
with the spike-preserving rule of :mod:`app.downsampling`) and for a diagnosis
(:func:`stored_history`). The SQL lives in :class:`app.repositories.HistoryRepository`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.downsampling import (
    LAYER_METRICS,
    MAX_LEVEL,
    MIN_LEVEL,
    STEP_METRICS,
    RollupBlocks,
    RollupBuilder,
    Summary,
    cover,
    downsample_points,
    in_step_order,
    plan_buckets,
)
from app.errors import NotFoundError, SpecValidationError
from app.lifecycle import TERMINAL
from app.models import Job
from app.repositories import EventRepository, HistoryRepository
from app.settings import Settings
from core.spec import TrainingSpec
from core.telemetry import StepRecord

__all__ = [
    "HistoryQuery",
    "HistoryWriter",
    "Rows",
    "StoredHistory",
    "gradient_history",
    "metrics_history",
    "pack_block",
    "stored_history",
    "unpack_blocks",
]

# --------------------------------------------------------------------------------------------
# The stored format
# --------------------------------------------------------------------------------------------

ROLLUP_FIELDS = 7  # count, min_step, min_value, max_step, max_value, nf_step, nf_value


def pack_block(summary: Summary, row: int, columns: slice) -> bytes:
    """One unit's summary of the series in ``columns`` as little-endian float64 bytes."""
    cols = (summary.count, summary.min_step, summary.min_value, summary.max_step,
            summary.max_value, summary.nf_step, summary.nf_value)
    table = np.stack([np.asarray(c[row, columns], dtype=np.float64) for c in cols], axis=1)
    return table.astype("<f8").tobytes()


def unpack_blocks(starts: np.ndarray, blobs: Sequence[bytes], n_metrics: int,
                  select: Sequence[int]) -> Summary:
    """Summaries of the ``select``-ed metrics from stored blocks starting at ``starts``."""
    n = len(blobs)
    if n == 0:
        return Summary.empty(len(select))
    table = np.frombuffer(b"".join(blobs), dtype="<f8").reshape(n, n_metrics, ROLLUP_FIELDS)
    table = table[:, list(select), :]
    ints = table[:, :, [0, 1, 3, 5]].astype(np.int64)
    return Summary(start=np.asarray(starts, dtype=np.int64), count=ints[:, :, 0],
                   min_step=ints[:, :, 1], min_value=table[:, :, 2].copy(),
                   max_step=ints[:, :, 2], max_value=table[:, :, 4].copy(),
                   nf_step=ints[:, :, 3], nf_value=table[:, :, 6].copy())





class HistoryWriter:
    """Turns a run's step records into the rows one flush inserts, rolling up the series
    into aligned blocks as they complete."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._step_rollups = RollupBuilder(len(STEP_METRICS))
        self._layer_rollups: RollupBuilder | None = None
        self._n_layers = 0

    def rows(self, steps: list[StepRecord], *, final: bool = False) -> Rows:
        """The rows of ``steps``, and the rollup blocks they complete (all open ones if
        ``final``)."""
        job_id = self.job_id
        rows = Rows()
        layer_blocks: list[RollupBlocks] = []
        step_blocks: list[RollupBlocks] = []
        if steps:
            n = len(steps)
            rows.steps = [(job_id, r.step, r.epoch, r.loss, r.grad_norm, r.clipped_grad_norm,
                           r.lr, bool(r.clipped)) for r in steps]
            values = np.array([row[3:7] for row in rows.steps], dtype=np.float64)
            rows.steps_nan = np.asarray(np.isnan(values).any(axis=1), dtype=bool)
            step_idx = np.fromiter((r.step for r in steps), np.int64, n)
            step_blocks = self._step_rollups.add(step_idx, values, np.ones(values.shape, bool))
            rows.layers = [(job_id, lr.layer, r.step, lr.grad_norm, lr.weight_grad_norm,
                            lr.weight_norm, lr.update_norm, lr.act_mean, lr.act_std,
                            lr.dead_fraction, lr.saturated_fraction)
                           for r in steps for lr in r.layers]
            if self._layer_rollups is None:
                self._n_layers = len(steps[0].layers)
                self._layer_rollups = RollupBuilder(self._n_layers * len(LAYER_METRICS))
            if rows.layers and len(rows.layers) == n * self._n_layers:
                table = np.array([row[3:] for row in rows.layers], dtype=object)
                present = table != None  # noqa: E711  (activation stats may be absent)
                layer_values = np.where(present, table, np.nan).astype(np.float64)
                rows.layers_nan = np.asarray(np.isnan(layer_values).any(axis=1), dtype=bool)
                width = self._n_layers * len(LAYER_METRICS)
                layer_blocks = self._layer_rollups.add(
                    step_idx, layer_values.reshape(n, width), present.reshape(n, width))
            else:
                rows.layers_nan = None
        if final:
            step_blocks += self._step_rollups.finish()
            if self._layer_rollups is not None:
                layer_blocks += self._layer_rollups.finish()
        rows.rollups = _rollup_rows(job_id, step_blocks, len(STEP_METRICS), [-1])
        rows.rollups += _rollup_rows(job_id, layer_blocks, len(LAYER_METRICS),
                                     list(range(self._n_layers)))
        return rows


@dataclass
class Rows:
    """What one flush inserts: step rows, layer rows (with a has-NaN flag per row, for
    SQLite's NaN binding), and rollup rows."""

    steps: list[tuple[Any, ...]] = field(default_factory=list)
    steps_nan: np.ndarray | None = None
    layers: list[tuple[Any, ...]] = field(default_factory=list)
    layers_nan: np.ndarray | None = None
    rollups: list[tuple[Any, ...]] = field(default_factory=list)


def _rollup_rows(job_id: str, blocks: list[RollupBlocks], n_metrics: int,
                 layer_of_group: list[int]) -> list[tuple[Any, ...]]:
    """One row per (level, layer, block) holding all of that layer's metrics."""
    rows: list[tuple[Any, ...]] = []
    for rb in blocks:
        summary = rb.summary
        for g, layer in enumerate(layer_of_group):
            columns = slice(g * n_metrics, (g + 1) * n_metrics)
            has_data = summary.count[:, columns].sum(axis=1) > 0
            for b in np.flatnonzero(has_data):
                rows.append((job_id, rb.level, layer, int(rb.block[b]),
                             pack_block(summary, int(b), columns)))
    return rows


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryQuery:
    start_step: int | None
    end_step: int | None
    max_points: int
    max_values: int | None = None  # response budget: points x series (None: unbounded)


def _check_budget(q: HistoryQuery, points: int, n_series: int) -> None:
    """422 when the response would carry more than ``q.max_values`` points in all."""
    values = min(points, q.max_points) * n_series
    if q.max_values is not None and values > q.max_values:
        msg = (f"this response would carry {values:,} points ({n_series} series of up to "
               f"{min(points, q.max_points):,}); the limit is {q.max_values:,} "
               "(GRADWATCH_MAX_HISTORY_VALUES): ask for one `layer`, fewer `metrics`, a "
               "smaller `max_points` or a narrower step range")
        raise SpecValidationError(msg, slug="limit-exceeded", limit=q.max_values, value=values,
                                  errors=[{"loc": ["query"], "msg": msg,
                                           "type": "limit_exceeded"}])


def _resolve_range(history: HistoryRepository, job: Job, q: HistoryQuery
                   ) -> tuple[int, int, int] | None:
    """(first recorded step, last recorded step, recorded steps) inside the requested range."""
    if q.start_step is not None and q.end_step is not None and q.end_step < q.start_step:
        raise SpecValidationError(
            f"end_step ({q.end_step}) is before start_step ({q.start_step})", slug="invalid-range",
            errors=[{"loc": ["query", "end_step"], "msg": "must be >= start_step",
                     "type": "value_error"}])
    lo = q.start_step if q.start_step is not None else 0
    hi = q.end_step if q.end_step is not None else 2**31 - 1
    first, last = history.step_bounds(job.id, lo, hi)
    if first is None or last is None:
        return None
    if last - first + 1 <= 4 * q.max_points:  # small ranges: counting is cheap
        return first, last, history.count_steps(job.id, first, last)
    # large ranges: the recorded-step counts stored in the step-metric rollups
    rolled = _rolled(history, job, -1, MAX_LEVEL, last)
    runs, raw_ranges = cover(first, last, MAX_LEVEL, rolled)
    count = sum(history.count_steps(job.id, a, b) for a, b in raw_ranges)
    blocks = history.rollup_blocks(job.id, [-1], runs)
    if -1 in blocks:
        starts, blobs = blocks[-1]
        count += int(unpack_blocks(starts, blobs, len(STEP_METRICS), [0]).count.sum())
    return first, last, count


def _rolled(history: HistoryRepository, job: Job, layer: int, top_level: int, last: int
            ) -> dict[int, int]:
    if job.status in TERMINAL:  # every block of a finished job was closed by its worker
        return dict.fromkeys(range(MIN_LEVEL, top_level + 1), last)
    return history.rolled_until(job.id, layer, top_level)


def _series(steps: np.ndarray, values: np.ndarray, present: np.ndarray | None = None
            ) -> dict[str, Any]:
    vals: list[float | None] = values.tolist()
    if present is not None and not present.all():
        vals = [v if p else None for v, p in zip(vals, present.tolist(), strict=True)]
    return {"steps": steps.tolist(), "values": vals}


def _downsample_layers(
    history: HistoryRepository, job: Job, layers: list[int], first: int, last: int,
    max_points: int, all_metrics: tuple[str, ...], names: tuple[str, ...],
) -> tuple[dict[int, list[tuple[np.ndarray, np.ndarray]]], int]:
    """Downsample ``names`` of each of ``layers`` (-1: the step metrics) over [first, last].

    Whole aligned blocks come from the stored rollups (one row per layer and block), the
    ragged ends and any not-yet-rolled tail of a running job from the raw rows.
    """
    plan = plan_buckets(first, last, max_points)
    select = [all_metrics.index(m) for m in names]
    runs: list[tuple[int, int, int]] = []
    raw_ranges = [(first, last)]
    if plan.level is not None:
        rolled = _rolled(history, job, layers[0], plan.level, last)
        runs, raw_ranges = cover(first, last, plan.level, rolled)
    job_id = job.id
    blocks = history.rollup_blocks(job_id, layers, runs)
    out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for layer in layers:
        def raw(ranges: list[tuple[int, int]], layer: int = layer
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if layer < 0:
                return history.step_points(job_id, names, ranges)
            return history.layer_points(job_id, layer, names, ranges)

        parts: list[Summary] = []
        if layer in blocks:
            starts, blobs = blocks[layer]
            parts.append(unpack_blocks(starts, blobs, len(all_metrics), select))
        if raw_ranges:
            parts.append(Summary.from_points(*raw(raw_ranges)))
        units = in_step_order(parts) if parts else Summary.empty(len(names))
        edge_s, edge_v, edge_p = raw([(first, first), (last, last)])
        edges = [(edge_s[edge_p[:, j]], edge_v[edge_p[:, j], j]) for j in range(len(names))]
        out[layer] = downsample_points(units, plan.bucket_size, edges)
    return out, plan.bucket_size


def _sampling(downsampled: bool, bucket_size: int | None, q: HistoryQuery, count: int
              ) -> dict[str, Any]:
    return {"downsampled": downsampled, "method": "minmax-buckets" if downsampled else None,
            "bucket_size": bucket_size if downsampled else None, "max_points": q.max_points,
            "points_in_range": count}


def _check_metrics(metrics: list[str] | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not metrics:
        return allowed
    names: list[str] = []
    for item in metrics:
        names.extend(p.strip() for p in item.split(",") if p.strip())
    unknown = [m for m in names if m not in allowed]
    if unknown:
        raise SpecValidationError(
            f"unknown metric {unknown[0]!r}; choose from {', '.join(allowed)}",
            slug="unknown-metric",
            errors=[{"loc": ["query", "metrics"], "msg": f"unknown metric {m!r}",
                     "type": "enum"} for m in unknown])
    return tuple(dict.fromkeys(names))


def gradient_history(session: Session, job: Job, q: HistoryQuery, *, layer: int | None,
                     metrics: list[str] | None) -> dict[str, Any]:
    """Per-layer series, downsampled to at most ``max_points`` points per series."""
    job_id = job.id
    names = _check_metrics(metrics, LAYER_METRICS)
    history = HistoryRepository(session)
    resolved = _resolve_range(history, job, q)
    out: dict[str, Any] = {"job_id": job_id, "start_step": None, "end_step": None, "layers": [],
                           **_sampling(False, None, q, 0)}
    if resolved is None:
        return out
    first, last, count = resolved
    layers = list(range(len(job.spec["model"]["hidden"]) + 1))  # hidden layers, then output
    if layer is not None:
        if layer not in layers:
            raise NotFoundError(f"job {job_id} has layers {layers[0]}..{layers[-1]}; "
                                f"no layer {layer}", slug="layer-not-found")
        layers = [layer]
    _check_budget(q, count, len(layers) * len(names))
    downsample = count > q.max_points
    bucket_size: int | None = None
    if downsample:
        results, bucket_size = _downsample_layers(
            history, job, layers, first, last, q.max_points, LAYER_METRICS, names)
    for ly in layers:
        if not downsample:
            steps, values, present = history.layer_points(job_id, ly, names, [(first, last)])
            series = {m: _series(steps, values[:, j], present[:, j]) for j, m in enumerate(names)}
        else:
            series = {m: _series(*results[ly][j]) for j, m in enumerate(names)}
        out["layers"].append({"layer": ly, "series": series})
    out.update(start_step=first, end_step=last, **_sampling(downsample, bucket_size, q, count))
    return out


def metrics_history(session: Session, job: Job, q: HistoryQuery, *,
                    metrics: list[str] | None) -> dict[str, Any]:
    """Network-level series (loss, pre/post-clip global norm, lr) and epoch figures."""
    job_id = job.id
    names = _check_metrics(metrics, STEP_METRICS)
    history = HistoryRepository(session)
    epochs = history.epochs(job_id)
    out: dict[str, Any] = {
        "job_id": job_id, "start_step": None, "end_step": None, "series": {},
        "epochs": {
            "epoch": [e.epoch for e in epochs], "step": [e.step for e in epochs],
            "train_loss": [e.train_loss for e in epochs], "val_loss": [e.val_loss for e in epochs],
            "val_accuracy": [e.val_accuracy for e in epochs],
            "train_accuracy": [e.train_accuracy for e in epochs]},
        **_sampling(False, None, q, 0)}
    resolved = _resolve_range(history, job, q)
    if resolved is None:
        return out
    first, last, count = resolved
    _check_budget(q, count, len(names))
    downsample = count > q.max_points
    bucket_size: int | None = None
    if not downsample:
        steps, values, present = history.step_points(job_id, names, [(first, last)])
        out["series"] = {m: _series(steps, values[:, j], present[:, j])
                         for j, m in enumerate(names)}
    else:
        results, bucket_size = _downsample_layers(
            history, job, [-1], first, last, q.max_points, STEP_METRICS, names)
        out["series"] = {m: _series(*results[-1][j]) for j, m in enumerate(names)}
    out.update(start_step=first, end_step=last, **_sampling(downsample, bucket_size, q, count))
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
    from core.telemetry import EpochRecord, LayerRecord, NonFiniteEvent, StepRecord

    history = HistoryRepository(session)
    alerts = [event.data for event in EventRepository(session).of_type(job.id, "alert")]
    nf = job.first_non_finite
    # A very long run is read thinned (bounded memory and time): every stride-th step plus
    # the last stored step, the first non-finite one and every step with a monitor alert.
    n_rows = history.step_count(job.id)
    stride = max(1, -(-n_rows // settings.diagnosis_max_records))
    also: list[int] = []
    if stride > 1:
        also = [a["step"] for a in alerts if isinstance(a.get("step"), int)]
        if nf:
            also.append(nf["step"])
        last = history.last_step(job.id)
        if last is not None:
            also.append(last)
    layers_by_step: dict[int, list[LayerRecord]] = {}
    for row in history.all_layers(job.id, stride=stride, also=also):
        layers_by_step.setdefault(row.step, []).append(LayerRecord(
            layer=row.layer, grad_norm=row.grad_norm, weight_grad_norm=row.weight_grad_norm,
            weight_norm=row.weight_norm, update_norm=row.update_norm, act_mean=row.act_mean,
            act_std=row.act_std, dead_fraction=row.dead_fraction,
            saturated_fraction=row.saturated_fraction))
    steps = [StepRecord(step=r.step, epoch=r.epoch, loss=r.loss, grad_norm=r.grad_norm,
                        clipped_grad_norm=r.clipped_grad_norm, lr=r.lr, clipped=r.clipped,
                        layers=layers_by_step.get(r.step, []))
             for r in history.all_steps(job.id, stride=stride, also=also)]
    epochs = [EpochRecord(epoch=e.epoch, step=e.step, train_loss=e.train_loss,
                          val_loss=e.val_loss, val_accuracy=e.val_accuracy,
                          train_accuracy=e.train_accuracy) for e in history.epochs(job.id)]
    first_nf = NonFiniteEvent(step=nf["step"], layer=nf["layer"], tensor=nf["tensor"],
                              value=nf["value"]) if nf else None
    spec = TrainingSpec.model_validate(job.spec, context={"limits": settings.spec_limits()})
    stop = job.stop_reason if job.status in TERMINAL else None
    if job.status in TERMINAL and stop is None:
        stop = "cancelled" if job.status == "cancelled" else "completed"
    return StoredHistory(spec, steps, epochs, stop, first_nf, alerts)
