"""/v1/jobs/{id}/plots/*: gradient, heatmap, loss and comparison plots (PNG or SVG).

The histories come from the same services as `/gradients` and `/metrics`, downsampled with
the same spike-preserving rule, so a plot never draws more than `max_points` per series.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from sqlalchemy.orm import Session

from app import plots
from app.deps import PrincipalDep, ReadSessionDep, SettingsDep
from app.errors import SpecValidationError
from app.repositories import ReportRepository
from app.routers.common import problems
from app.services import (
    HistoryQuery,
    compare,
    get_job,
    gradient_history,
    job_to_read,
    metrics_history,
)
from app.tenancy import Principal

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["plots"])

JobId = Annotated[str, Path(description="The job's id (a UUID, as returned by `POST /v1/jobs`).")]
FormatQuery = Annotated[Literal["png", "svg"] | None, Query(
    alias="format", description="`png` (default) or `svg`; `Accept: image/svg+xml` also "
                                "selects SVG.")]
AcceptHeader = Annotated[str | None, Header(alias="Accept", include_in_schema=False)]
MaxPoints = Annotated[int, Query(ge=10, description="At most this many points per series "
                                                    "(downsampled like `/gradients`).")]

_MEDIA = {"png": "image/png", "svg": "image/svg+xml"}
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The plot: PNG by default, SVG with `?format=svg` or "
                         "`Accept: image/svg+xml`.",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                      "image/svg+xml": {"schema": {"type": "string"}}}},
    **problems(404, 422),
}


def _format(fmt: str | None, accept: str | None) -> plots.Format:
    if fmt == "svg" or (fmt is None and accept and "image/svg+xml" in accept
                        and "image/png" not in accept):
        return "svg"
    return "png"


def _query(settings: Any, max_points: int) -> HistoryQuery:
    if max_points > settings.max_history_points:
        raise SpecValidationError(
            f"max_points is {max_points}; the limit is {settings.max_history_points} "
            "(GRADWATCH_MAX_HISTORY_POINTS)", slug="limit-exceeded",
            errors=[{"loc": ["query", "max_points"], "msg": "limit exceeded",
                     "type": "limit_exceeded"}])
    return HistoryQuery(None, None, max_points)


def _image(data: bytes, fmt: plots.Format) -> Response:
    return Response(content=data, media_type=_MEDIA[fmt],
                    headers={"Cache-Control": "no-store", "Vary": "Accept"})


def _note(history: dict[str, Any], job: dict[str, Any]) -> str:
    # points_in_range counts records: with record_every k, 1 step in k (a 1,300-step job
    # recording every 10th read "131 steps")
    every = int((job["spec"].get("monitor") or {}).get("record_every") or 1)
    steps = f"{history.get('points_in_range', 0):,} " + (
        f"recorded steps (1 in {every})" if every > 1 else "steps")
    if history.get("downsampled"):
        return (f"{steps} shown as min/max of "
                f"{history['bucket_size']}-step buckets (spikes and NaN/Inf kept)")
    return f"{steps}, every point"


def _clip(spec: dict[str, Any]) -> tuple[float | None, str]:
    clipping = spec.get("clipping") or {}
    mode = clipping.get("mode")
    if mode in ("global_norm", "layer_norm") and clipping.get("max_norm") is not None:
        what = "global" if mode == "global_norm" else "per-layer"
        return float(clipping["max_norm"]), f"clip max_norm ({what})"
    return None, ""


def _onset(session: Any, job_id: str) -> int | None:
    """The stored (final) diagnosis' first bad step. A running job has no stored report and
    its provisional one costs a diagnosis of the whole history: not worth it for a picture."""
    row = ReportRepository(session).get(job_id)
    step = row.report.get("first_bad_step") if row is not None else None
    return int(step) if step is not None else None


def _marks(session: Any, job: dict[str, Any], note: str) -> plots.Marks:
    threshold, label = _clip(job["spec"])
    nf = job.get("first_non_finite")
    return plots.Marks(clip_threshold=threshold, clip_label=label,
                       first_non_finite_step=nf["step"] if nf else None,
                       first_bad_step=_onset(session, job["id"]), note=note)


def _layer_norms(session: Session, job_id: str, q: HistoryQuery, principal: Principal
                 ) -> tuple[dict[str, Any], list[plots.Series]]:
    """The job's per-layer pre-clip gradient norms (downsampled by ``q``): the history and
    one series per layer."""
    history = gradient_history(session, job_id, q, principal=principal, layer=None,
                               metrics=["grad_norm"])
    return history, [plots.Series.of(ly["series"]["grad_norm"]["steps"],
                                     ly["series"]["grad_norm"]["values"], f"layer {ly['layer']}")
                     for ly in history["layers"]]


def _title(job: dict[str, Any], what: str) -> str:
    verdict = job.get("verdict") or job["status"]
    return f"{what} — {job.get('name') or job['id'][:8]} ({verdict})"


@router.get("/{job_id}/plots/gradients", operation_id="plotGradients",
            summary="Plot: per-layer gradient norms (log scale)",
            description="Per-layer pre-clip gradient norm vs step on a log scale (one line per "
                        "layer, the global norm in black), the clip threshold, the final diagnosis"
                        " onset (`first_bad_step`) and the first NaN/Inf step. NaN/Inf points "
                        "are drawn at the top edge, not dropped.",
            response_class=Response, responses=_IMAGE_RESPONSES)
def plot_gradients(job_id: JobId, session: ReadSessionDep, settings: SettingsDep,
                   principal: PrincipalDep,
                   fmt: FormatQuery = None, accept: AcceptHeader = None,
                   max_points: MaxPoints = 1000) -> Response:
    q = _query(settings, max_points)
    job = job_to_read(get_job(session, job_id, principal))
    history, layers = _layer_norms(session, job_id, q, principal)
    overall = metrics_history(session, job_id, q, principal=principal, metrics=["grad_norm"])
    g = overall["series"].get("grad_norm")
    global_norm = plots.Series.of(g["steps"], g["values"], "global") if g else None
    form = _format(fmt, accept)
    return _image(plots.gradients_plot(layers, _marks(session, job, _note(history, job)),
                                       global_norm=global_norm,
                                       title=_title(job, "Gradient norms before clipping"),
                                       fmt=form), form)


@router.get("/{job_id}/plots/heatmap", operation_id="plotHeatmap",
            summary="Plot: layer × step heatmap of log gradient norm",
            description="Where an explosion starts, in depth and in time, at a glance: each "
                        "cell is the largest log10 pre-clip gradient norm of a layer in a step "
                        "range; NaN/Inf cells are solid red.",
            response_class=Response, responses=_IMAGE_RESPONSES)
def plot_heatmap(job_id: JobId, session: ReadSessionDep, settings: SettingsDep,
                 principal: PrincipalDep,
                 fmt: FormatQuery = None, accept: AcceptHeader = None,
                 max_points: MaxPoints = 1000) -> Response:
    q = _query(settings, max_points)
    job = job_to_read(get_job(session, job_id, principal))
    history, layers = _layer_norms(session, job_id, q, principal)
    form = _format(fmt, accept)
    return _image(plots.heatmap_plot(layers, _marks(session, job, _note(history, job)),
                                     title=_title(job, "log10 gradient norm"), fmt=form), form)


@router.get("/{job_id}/plots/loss", operation_id="plotLoss",
            summary="Plot: loss and validation loss",
            description="Training loss per step and validation loss per epoch; a log scale "
                        "when the loss spans more than 100× or holds NaN/Inf.",
            response_class=Response, responses=_IMAGE_RESPONSES)
def plot_loss(job_id: JobId, session: ReadSessionDep, settings: SettingsDep,
              principal: PrincipalDep,
              fmt: FormatQuery = None, accept: AcceptHeader = None,
              max_points: MaxPoints = 1000) -> Response:
    q = _query(settings, max_points)
    job = job_to_read(get_job(session, job_id, principal))
    history = metrics_history(session, job_id, q, principal=principal, metrics=["loss"])
    loss = history["series"].get("loss") or {"steps": [], "values": []}
    epochs = history["epochs"]
    val = plots.Series.of(epochs["step"], epochs["val_loss"], "validation loss")
    form = _format(fmt, accept)
    return _image(plots.loss_plot(plots.Series.of(loss["steps"], loss["values"], "loss"),
                                  _marks(session, job, _note(history, job)), val_loss=val,
                                  title=_title(job, "Loss"), fmt=form), form)


@router.get("/{job_id}/plots/comparison", operation_id="plotComparison",
            summary="Plot: a job and its repair, overlaid",
            description="Global pre-clip gradient norm and loss of both runs on shared axes. "
                        "`job_id` may be the original (its latest repair is used) or the "
                        "repair; `other` picks the second job explicitly.",
            response_class=Response, responses=_IMAGE_RESPONSES)
def plot_comparison(job_id: JobId, session: ReadSessionDep, settings: SettingsDep,
                    principal: PrincipalDep,
                    other: Annotated[str | None, Query(
                        description="The job to compare with (default: the repair of "
                                    "`job_id`, or its parent).")] = None,
                    fmt: FormatQuery = None, accept: AcceptHeader = None,
                    max_points: MaxPoints = 1000) -> Response:
    q = _query(settings, max_points)
    pair = compare(session, job_id, settings, principal=principal, other=other)
    runs = []
    for role in ("original", "repair"):
        figures = pair[role]
        job = job_to_read(get_job(session, figures["job_id"], principal))
        history = metrics_history(session, figures["job_id"], q, principal=principal,
                                  metrics=["grad_norm", "loss"])
        empty: dict[str, list[Any]] = {"steps": [], "values": []}
        g = history["series"].get("grad_norm", empty)
        loss = history["series"].get("loss", empty)
        label = f"{role} {job['id'][:8]} ({job.get('verdict') or job['status']})"
        nf = job.get("first_non_finite")
        runs.append(plots.Run(label, plots.Series.of(g["steps"], g["values"]),
                              plots.Series.of(loss["steps"], loss["values"]),
                              plots.Marks(first_non_finite_step=nf["step"] if nf else None)))
    form = _format(fmt, accept)
    verdicts = [pair[r]["verdict"] or pair[r]["status"] for r in ("original", "repair")]
    title = f"Before and after the repair: {verdicts[0]} → {verdicts[1]}"
    return _image(plots.comparison_plot(runs[0], runs[1], title=title, fmt=form), form)

