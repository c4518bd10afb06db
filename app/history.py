"""A job's history read back: the HTTP histories and what a diagnosis needs.

The history is written by the worker's sink through :class:`app.history_store.HistoryWriter`
and stored in the compact columnar format of :mod:`app.history_store` (which alone knows its
bytes); here it is read back for the HTTP histories (downsampled with the spike-preserving
rule of :mod:`app.downsampling`, whole aligned blocks from the stored rollups, the rest from
the chunks) and for a diagnosis (:func:`stored_history`). The SQL lives in
:class:`app.repositories.HistoryRepository`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.downsampling import (
    LAYER_METRICS,
    STEP_METRICS,
    Summary,
    cover,
    downsample_points,
    in_step_order,
    plan_buckets,
)
from app.errors import NotFoundError, SpecValidationError
from app.history_cursor import HistoryCursor, query_digest
from app.history_formats import HistoryPage, SeriesColumns
from app.history_store import (
    STORED_MIN_LEVEL,
    ChunkData,
    HistoryWriter,
    decode_chunk,
    decode_rollups,
    series_index,
)
from app.lifecycle import TERMINAL
from app.models import Job
from app.repositories import EventRepository, HistoryRepository
from app.settings import Settings
from core.spec import TrainingSpec
from core.telemetry import LayerRecord, StepRecord

__all__ = [
    "HistoryPage",
    "HistoryQuery",
    "HistoryWriter",
    "StoredHistory",
    "gradient_history",
    "gradient_page",
    "metrics_history",
    "metrics_page",
    "recorded_steps",
    "run_figures",
    "stored_history",
]


class _Stored:
    """One request's view of a job's stored history: raw points from its chunks (each chunk
    fetched once), counts, bounds and rollup summaries."""

    def __init__(self, repo: HistoryRepository, key: int, n_layers: int) -> None:
        self.repo, self.key, self.n_layers = repo, key, n_layers
        self._chunks: dict[int, tuple[int, bytes]] = {}  # first step -> (last step, data)
        self._decoded: dict[tuple[int, tuple[int, ...] | None], ChunkData] = {}

    @classmethod
    def of(cls, session: Session, job_id: str) -> _Stored | None:
        repo = HistoryRepository(session)
        found = repo.key_of(job_id)
        return None if found is None else cls(repo, *found)

    def _fetch(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """(first step, data) of the chunks overlapping [lo, hi]; a range inside a chunk
        already fetched by this request costs no query."""
        for first, (last, data) in self._chunks.items():
            if first <= lo and hi <= last:
                return [(first, data)]
        rows = self.repo.chunks(self.key, lo, hi)
        for first, last, _, data in rows:
            self._chunks[first] = (last, data)
        return [(first, data) for first, _, _, data in rows]

    def _decode(self, first: int, data: bytes, series: Sequence[int] | None) -> ChunkData:
        """A chunk's ``series``, decoded once per request."""
        key = (first, None if series is None else tuple(series))
        found = self._decoded.get(key)
        if found is None:
            found = self._decoded[key] = decode_chunk(data, series)
        return found

    def points(self, series: Sequence[int], ranges: Sequence[tuple[int, int]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw points of ``series`` in the inclusive step ranges: steps, values, present."""
        steps, values, present = [], [], []
        for lo, hi in ranges:
            if lo > hi:
                continue
            for first, data in self._fetch(lo, hi):
                d = self._decode(first, data, series)
                if lo <= d.steps[0] and d.steps[-1] <= hi:
                    steps.append(d.steps)
                    values.append(d.values)
                    present.append(d.present)
                    continue
                a, b = np.searchsorted(d.steps, [lo, hi + 1])
                steps.append(d.steps[a:b])
                values.append(d.values[a:b])
                present.append(d.present[a:b])
        if not steps:
            k = len(series)
            return np.empty(0, np.int64), np.empty((0, k)), np.empty((0, k), dtype=bool)
        if len(steps) == 1:
            return steps[0], values[0], present[0]
        return np.concatenate(steps), np.concatenate(values), np.concatenate(present)

    def nth_step(self, lo: int, hi: int, k: int) -> int | None:
        """The ``k``-th recorded step (from 1) within [lo, hi]; None when there are fewer.
        Whole chunks are skipped by their count; only the chunk holding it is decoded."""
        seen = 0
        for first, last, n in self.repo.chunk_spans(self.key, lo, hi):
            inside = lo <= first and last <= hi
            if inside and seen + n < k:
                seen += n
                continue
            steps = self.points([], [(max(lo, first), min(hi, last))])[0]
            if seen + len(steps) >= k:
                return int(steps[k - seen - 1])
            seen += len(steps)
        return None

    def extent(self, lo: int, hi: int) -> tuple[int, int, int] | None:
        """(first recorded step, last recorded step, recorded steps) within [lo, hi]: the
        chunks inside the range by their stored spans (one query), the (at most two) chunks
        that straddle its ends from their decoded steps."""
        first, last, count = self.repo.chunk_totals(self.key, lo, hi)
        seen: set[int] = set()
        for edge in {lo, hi} - {0, 2**31 - 1}:  # no chunk straddles step 0 or the last
            for chunk_first, data in self._fetch(edge, edge):
                chunk_last = self._chunks[chunk_first][0]
                if (lo <= chunk_first and chunk_last <= hi) or chunk_first in seen:
                    continue  # inside the range (counted by its span), or counted already
                seen.add(chunk_first)
                steps = self._decode(chunk_first, data, []).steps
                steps = steps[(steps >= lo) & (steps <= hi)]
                if steps.size:
                    count += int(steps.size)
                    first = int(steps[0]) if first is None else min(first, int(steps[0]))
                    last = int(steps[-1]) if last is None else max(last, int(steps[-1]))
        if first is None or last is None:
            return None
        return first, last, count

    def last_step(self) -> int | None:
        found = self.extent(0, 2**31 - 1)
        return None if found is None else found[1]

    def n_steps(self) -> int:
        return sum(n for _, _, n in self.repo.chunk_spans(self.key, 0, 2**31 - 1))

    def rolled(self, job: Job, top_level: int, last: int) -> dict[int, int]:
        """Per stored level up to ``top_level``: the last step its blocks cover."""
        levels = range(STORED_MIN_LEVEL, top_level + 1)
        if job.status in TERMINAL:  # every block of a finished job was closed by its worker
            return dict.fromkeys(levels, last)
        blocks = self.repo.rolled_until(self.key)
        return {lv: ((blocks[lv] + 1) << lv) - 1 for lv in levels if lv in blocks}

    def summaries(self, runs: Sequence[tuple[int, int, int]], series: Sequence[int]) -> Summary:
        return decode_rollups(self.n_layers, self.repo.rollups(self.key, runs), series)

    def all_points(self, series: Sequence[int] | None, window: int = 256
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, ChunkData]]:
        """Every chunk in step order, decoded (``series`` only), a window of chunks at a time."""
        spans = self.repo.chunk_spans(self.key, 0, 2**31 - 1)
        for i in range(0, len(spans), window):
            group = spans[i:i + window]
            for _, _, _, data in self.repo.chunks(self.key, group[0][0], group[-1][1]):
                d = decode_chunk(data, series)
                yield d.steps, d.values, d.present, d


@dataclass(frozen=True)
class HistoryQuery:
    start_step: int | None
    end_step: int | None
    max_points: int
    max_values: int | None = None  # response budget: points x series (None: unbounded)
    cursor: str | None = None  # the previous page's next_cursor (paged reads)
    max_points_limit: int | None = None  # a downsampled read keeps at most this many per series


@dataclass(frozen=True)
class _Span:
    """What one response covers: steps [first, last], ``count`` recorded steps in the read
    (to its end, for a paged read), downsampled or not, and the cursor of the next page."""

    first: int
    last: int
    count: int
    downsample: bool
    next_cursor: str | None = None


def _limit_exceeded(msg: str, *, limit: int, value: int, loc: list[str]) -> SpecValidationError:
    return SpecValidationError(msg, slug="limit-exceeded", limit=limit, value=value,
                               errors=[{"loc": loc, "msg": msg, "type": "limit_exceeded"}])


def _check_downsampled(q: HistoryQuery, n_series: int) -> None:
    """422 when a downsampled response would be over a limit: it is one response, not paged."""
    if q.max_points_limit is not None and q.max_points > q.max_points_limit:
        raise _limit_exceeded(
            f"max_points is {q.max_points} and the range holds more steps, so it would be "
            f"downsampled to more than the limit of {q.max_points_limit:,} points per series "
            "(GRADWATCH_MAX_HISTORY_POINTS); ask for fewer, or for at least as many as the "
            "range holds to read every point (paged)",
            limit=q.max_points_limit, value=q.max_points, loc=["query", "max_points"])
    values = q.max_points * n_series
    if q.max_values is not None and values > q.max_values:
        raise _limit_exceeded(
            f"this downsampled response would carry {values:,} points ({n_series} series of "
            f"up to {q.max_points:,}); the limit is {q.max_values:,} "
            "(GRADWATCH_MAX_HISTORY_VALUES): ask for one `layer`, fewer `metrics` or a "
            "smaller `max_points`", limit=q.max_values, value=values, loc=["query"])


def _span(store: _Stored, job: Job, q: HistoryQuery, paging: _Paging, n_series: int
          ) -> _Span | None:
    """The steps this response covers; None when the range holds no recorded step.

    A read that is not downsampled and would carry more than ``q.max_values`` points is
    paged: this page ends at the last step that fits, and ``next_cursor`` resumes after it.
    """
    cursor = paging.cursor
    if cursor is not None:
        lo, hi = cursor.next_step, cursor.last_step
    else:
        lo = q.start_step if q.start_step is not None else 0
        hi = q.end_step if q.end_step is not None else 2**31 - 1
    resolved = store.extent(lo, hi)
    if resolved is None:
        return None
    first, last, count = resolved
    if cursor is None and count > q.max_points:
        _check_downsampled(q, n_series)
        return _Span(first, last, count, downsample=True)
    if q.max_values is None or count * n_series <= q.max_values:
        return _Span(first, last, count, downsample=False)
    page_last = store.nth_step(first, last, max(1, q.max_values // n_series))
    if page_last is None or page_last >= last:
        return _Span(first, last, count, downsample=False)
    return _Span(first, page_last, count, downsample=False,
                 next_cursor=HistoryCursor(page_last + 1, last, paging.digest).encode())


def _check_range(q: HistoryQuery) -> None:
    if q.start_step is not None and q.end_step is not None and q.end_step < q.start_step:
        raise SpecValidationError(
            f"end_step ({q.end_step}) is before start_step ({q.start_step})", slug="invalid-range",
            errors=[{"loc": ["query", "end_step"], "msg": "must be >= start_step",
                     "type": "value_error"}])


def _downsample(store: _Stored, job: Job, groups: list[list[int]], first: int, last: int,
                max_points: int) -> tuple[list[list[tuple[np.ndarray, np.ndarray]]], int]:
    """Downsample each group of series (a layer's metrics, or the step metrics) over
    [first, last]: per group, per series (steps, values); and the bucket size.

    Whole aligned blocks come from the stored rollups (one row per block for every series),
    the ragged ends and any not-yet-rolled tail of a running job from the chunks.
    """
    plan = plan_buckets(first, last, max_points)
    runs: list[tuple[int, int, int]] = []
    raw_ranges = [(first, last)]
    if plan.level is not None:
        runs, raw_ranges = cover(first, last, plan.level, store.rolled(job, plan.level, last))
    every = [s for group in groups for s in group]
    parts = [store.summaries(runs, every)] if runs else []
    if raw_ranges:
        parts.append(Summary.from_points(*store.points(every, raw_ranges)))
    units = in_step_order(parts) if parts else Summary.empty(len(every))
    edge_s, edge_v, edge_p = store.points(every, [(first, first), (last, last)])
    edges = [(edge_s[edge_p[:, j]], edge_v[edge_p[:, j], j]) for j in range(len(every))]
    picked = downsample_points(units, plan.bucket_size, edges)
    out, i = [], 0
    for group in groups:
        out.append(picked[i:i + len(group)])
        i += len(group)
    return out, plan.bucket_size


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


def _fill(page: HistoryPage, store: _Stored, job: Job, span: _Span,
          series: list[tuple[int | None, str, int]]) -> None:
    """Read ``series`` (layer, metric, stored index) over ``span`` into ``page``."""
    index = [s for _, _, s in series]
    if span.downsample:
        (picked,), bucket = _downsample(store, job, [index], span.first, span.last,
                                        page.max_points)
        page.columns = [SeriesColumns(ly, m, steps, values)
                        for (ly, m, _), (steps, values) in zip(series, picked, strict=True)]
        page.bucket_size = bucket
    else:
        steps, values, present = store.points(index, [(span.first, span.last)])
        page.columns = [SeriesColumns(ly, m, steps, values[:, j], present[:, j])
                        for j, (ly, m, _) in enumerate(series)]
    page.start_step, page.end_step = span.first, span.last
    page.downsampled, page.points_in_range = span.downsample, span.count
    page.next_cursor = span.next_cursor


@dataclass(frozen=True)
class _Paging:
    """The request's cursor (validated) and the digest the next cursor will carry."""

    cursor: HistoryCursor | None
    digest: bytes

    @classmethod
    def of(cls, q: HistoryQuery, *key: Any) -> _Paging:
        digest = query_digest(*key, q.max_points, q.start_step, q.end_step)
        cursor = None if q.cursor is None else HistoryCursor.decode(q.cursor, digest)
        return cls(cursor, digest)


def gradient_page(session: Session, job: Job, q: HistoryQuery, *, layer: int | None,
                  metrics: list[str] | None) -> HistoryPage:
    """Per-layer series: downsampled to at most ``max_points`` points per series, or every
    point, paged past the response budget."""
    names = _check_metrics(metrics, LAYER_METRICS)
    _check_range(q)
    paging = _Paging.of(q, job.id, "gradients", layer, names)
    layers = list(range(len(job.spec["model"]["hidden"]) + 1))  # hidden layers, then output
    page = HistoryPage("gradients", job.id, q.max_points)
    store = _Stored.of(session, job.id)
    if store is None:
        return page
    if layer is not None:
        if layer not in layers:
            raise NotFoundError(f"job {job.id} has layers {layers[0]}..{layers[-1]}; "
                                f"no layer {layer}", slug="layer-not-found")
        layers = [layer]
    span = _span(store, job, q, paging, len(layers) * len(names))
    if span is not None:
        _fill(page, store, job, span, [(ly, m, series_index(ly, LAYER_METRICS.index(m)))
                                       for ly in layers for m in names])
    return page


def metrics_page(session: Session, job: Job, q: HistoryQuery, *,
                 metrics: list[str] | None) -> HistoryPage:
    """Network-level series (loss, pre/post-clip global norm, lr) and, on the first page,
    the epoch figures."""
    names = _check_metrics(metrics, STEP_METRICS)
    _check_range(q)
    paging = _Paging.of(q, job.id, "metrics", None, names)
    page = HistoryPage("metrics", job.id, q.max_points,
                       epochs=_epochs(session, job.id, paging.cursor))
    store = _Stored.of(session, job.id)
    if store is None:
        return page
    span = _span(store, job, q, paging, len(names))
    if span is not None:
        _fill(page, store, job, span, [(None, m, series_index(-1, STEP_METRICS.index(m)))
                                       for m in names])
    return page


def _epochs(session: Session, job_id: str, cursor: HistoryCursor | None) -> dict[str, list[Any]]:
    """The job's epoch figures (never downsampled); later pages of a paged read: none."""
    epochs = [] if cursor is not None else HistoryRepository(session).epochs(job_id)
    return {"epoch": [e.epoch for e in epochs], "step": [e.step for e in epochs],
            "train_loss": [e.train_loss for e in epochs], "val_loss": [e.val_loss for e in epochs],
            "val_accuracy": [e.val_accuracy for e in epochs],
            "train_accuracy": [e.train_accuracy for e in epochs]}


def gradient_history(session: Session, job: Job, q: HistoryQuery, *, layer: int | None,
                     metrics: list[str] | None) -> dict[str, Any]:
    """:func:`gradient_page` as Python objects (lists)."""
    return gradient_page(session, job, q, layer=layer, metrics=metrics).as_dict()


def metrics_history(session: Session, job: Job, q: HistoryQuery, *,
                    metrics: list[str] | None) -> dict[str, Any]:
    """:func:`metrics_page` as Python objects (lists)."""
    return metrics_page(session, job, q, metrics=metrics).as_dict()


def run_figures(session: Session, job_id: str) -> dict[str, Any]:
    """Key figures of a run for comparisons: last/min loss, max grad norm and its step."""
    out: dict[str, Any] = {"final_loss": None, "min_loss": None, "max_grad_norm": None,
                           "max_grad_norm_step": None}
    store = _Stored.of(session, job_id)
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

    alerts = [event.data for event in EventRepository(session).of_type(job.id, "alert")]
    nf = job.first_non_finite
    steps: list[Any] = []
    store = _Stored.of(session, job.id)
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
    store = _Stored.of(session, job_id)
    if store is None:
        return []
    return [_record(i, chunk, values[i], present[i], store.n_layers)
            for steps, values, present, chunk in store.all_points(None)
            for i in range(len(steps))]


def _thinned_records(store: _Stored, alerts: list[dict[str, Any]], nf: dict[str, Any] | None,
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
