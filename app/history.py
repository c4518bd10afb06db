"""A job's history read back for the HTTP histories, and what a diagnosis needs.

The history is written by the worker's sink through :class:`app.history_store.HistoryWriter`
and stored in the compact columnar format of :mod:`app.history_store` (which alone knows its
bytes); here it is read back for the HTTP histories (downsampled with the spike-preserving
rule of :mod:`app.downsampling`, whole aligned blocks from the stored rollups, the rest from
the chunks, through one request's :class:`app.history_view.HistoryView`): a query's range,
limits and paging. The whole-run reads (for a diagnosis, :func:`stored_history`) live in
:mod:`app.history_records` and are re-exported here. The SQL lives in
:class:`app.repositories.HistoryRepository`.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from app.history_records import StoredHistory, recorded_steps, run_figures, stored_history
from app.history_store import HistoryWriter, series_index
from app.history_view import HistoryView
from app.models import Job
from app.repositories import HistoryRepository

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


def _span(store: HistoryView, job: Job, q: HistoryQuery, paging: _Paging, n_series: int
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


def _downsample(store: HistoryView, job: Job, groups: list[list[int]], first: int, last: int,
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


def _fill(page: HistoryPage, store: HistoryView, job: Job, span: _Span,
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
    store = HistoryView.of(session, job.id)
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
    store = HistoryView.of(session, job.id)
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

