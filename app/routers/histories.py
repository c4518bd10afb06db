"""/v1/jobs/{id}/gradients, /metrics and /diagnostics."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from app.deps import PrincipalDep, ReadSessionDep, SettingsDep
from app.downsampling import LAYER_METRICS, STEP_METRICS
from app.history_cursor import MAX_CURSOR_LENGTH
from app.history_formats import ARROW_STREAM, HistoryPage, arrow_stream, json_pieces
from app.jsonutil import in_blocks
from app.routers.common import MAX_STEP, problems
from app.schemas import GradientHistory, MetricsHistory
from app.services import HistoryQuery, diagnostics, gradient_page, metrics_page
from core.diagnostics import DiagnosticReport

router = APIRouter(prefix="/v1/jobs", tags=["histories"])

_DOWNSAMPLING = (
    "Columnar: each series is `{steps: [...], values: [...]}`. When the range holds more "
    "than `max_points` steps the series is downsampled without hiding a spike: the range is "
    "cut into aligned buckets of `bucket_size` steps and each bucket keeps its minimum and "
    "maximum point and its first NaN/±Inf (a NaN takes the minimum's place); the first and "
    "last points of the range are always kept. `downsampled`, `method` and `bucket_size` say "
    "what happened. NaN and ±Inf are the strings \"NaN\", \"Infinity\", \"-Infinity\"; a "
    "missing value (an activation statistic that does not apply) is null."
)

_PAGING = (
    " **Every point, paged**: when the range holds at most `max_points` steps, every "
    "recorded point is returned; past the response budget (GRADWATCH_MAX_HISTORY_VALUES "
    "points: steps x series) the response is the first page, with `next_cursor` and a "
    "`Link: <...>; rel=\"next\"` header (RFC 8288) for the next; following them returns "
    "every point exactly once, in step order. To read every point of a long run ask for "
    "`max_points` at least its number of steps. A downsampled read is always one response. "
    "**Binary**: `Accept: application/vnd.apache.arrow.stream` (or `format=arrow`) returns "
    "the same response as an Apache Arrow IPC stream: a `step` column and one float64 column "
    "per series (`loss`, `layers.0.grad_norm`, ...; null = no value at that step), the float "
    "bits exactly as stored, the rest in the schema metadata `gradwatch`; paged alike."
)

StartStep = Annotated[int | None, Query(ge=0, le=MAX_STEP,
                                        description="First step (inclusive).")]
EndStep = Annotated[int | None, Query(ge=0, le=MAX_STEP, description="Last step (inclusive); "
                                      "422 when before `start_step`.")]
MaxPoints = Annotated[int, Query(ge=10, le=MAX_STEP + 1, description=(
    "At most this many points per series: a range holding more steps is downsampled (then "
    "at most GRADWATCH_MAX_HISTORY_POINTS); one holding at most this many is read in full, "
    "paged past the response budget."))]
Cursor = Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH, description=(
    "`next_cursor` of the previous page, with the same other parameters (the `Link` "
    "header's URL carries both)."))]
Format = Annotated[Literal["json", "arrow"] | None, Query(
    description="`arrow`: an Apache Arrow IPC stream (as `Accept: "
                "application/vnd.apache.arrow.stream`); default JSON.")]

_LINK_EXAMPLE = ('</v1/jobs/3f2c9a8e-5b1d-4c7e-9a0f-2d6b8e1c4a75/metrics?max_points=1000000&'
                 'cursor=AQABhqAAD0I_k2s1c0xVtEw>; rel="next"')
_OK: dict[int | str, dict[str, Any]] = {200: {
    "description": "The history (JSON, or an Arrow IPC stream when asked for).",
    "headers": {"Link": {"description": "RFC 8288 link to the next page of a paged read "
                                        "(absent on the last page).",
                         "schema": {"type": "string"}, "example": _LINK_EXAMPLE}},
    "content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}},
}}


def _metrics_pattern(names: tuple[str, ...]) -> str:
    one = "|".join(names)
    return f"^(({one})(,({one}))*)?$"


def _query(settings: Any, start: int | None, end: int | None, max_points: int,
           cursor: str | None) -> HistoryQuery:
    return HistoryQuery(start, end, max_points, settings.max_history_values, cursor=cursor,
                        max_points_limit=settings.max_history_points)


def _prefers_arrow(accept: str) -> bool:
    """True when the Accept header ranks the Arrow stream above JSON (RFC 9110 q-values;
    JSON stands for itself, ``application/*`` and ``*/*``)."""
    arrow = json_q = 0.0
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == ARROW_STREAM:
            arrow = max(arrow, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return arrow > json_q


def _response(request: Request, page: HistoryPage, fmt: str | None) -> StreamingResponse:
    """The page, streamed as JSON (never one big string) or as an Arrow IPC stream."""
    arrow = fmt == "arrow" or (fmt is None and _prefers_arrow(request.headers.get("accept", "")))
    headers = {"Vary": "Accept"}
    if page.next_cursor is not None:
        url = request.url.include_query_params(cursor=page.next_cursor)
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    if arrow:
        return StreamingResponse(arrow_stream(page), media_type=ARROW_STREAM, headers=headers)
    return StreamingResponse(in_blocks(json_pieces(page)), media_type="application/json",
                             headers=headers)


@router.get(
    "/{job_id}/gradients",
    response_model=GradientHistory,
    operation_id="getGradientHistory",
    summary="Per-layer gradient norms and statistics",
    description="Per layer and step: `grad_norm` (all of the layer's parameters, before "
                "clipping), `weight_grad_norm`, `weight_norm`, `update_norm`, `act_mean`, "
                "`act_std`, `dead_fraction`, `saturated_fraction`. " + _DOWNSAMPLING + _PAGING,
    responses={**_OK, **problems(404, 422)},
)
def gradients(
    request: Request,
    job_id: str,
    session: ReadSessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    layer: Annotated[int | None, Query(ge=0, le=MAX_STEP,
                                       description="Only this layer (0 = first hidden).")] = None,
    start_step: StartStep = None,
    end_step: EndStep = None,
    max_points: MaxPoints = 1000,
    metrics: Annotated[list[Annotated[str, Field(pattern=_metrics_pattern(LAYER_METRICS))]] | None, Query(
        description=f"Only these series (repeat or comma-separate): {', '.join(LAYER_METRICS)}."
    )] = None,
    cursor: Cursor = None,
    format: Format = None,
) -> StreamingResponse:
    q = _query(settings, start_step, end_step, max_points, cursor)
    page = gradient_page(session, job_id, q, principal=principal, layer=layer, metrics=metrics)
    return _response(request, page, format)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsHistory,
    operation_id="getMetricsHistory",
    summary="Loss, global gradient norm, learning rate; epoch figures",
    description="Per step: `loss`, `grad_norm` (global L2 norm before clipping), "
                "`clipped_grad_norm`, `lr`; per epoch (never downsampled; on the first page "
                "of a paged read): training loss, validation loss and accuracy. "
                + _DOWNSAMPLING + _PAGING,
    responses={**_OK, **problems(404, 422)},
)
def metrics(
    request: Request,
    job_id: str,
    session: ReadSessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    start_step: StartStep = None,
    end_step: EndStep = None,
    max_points: MaxPoints = 1000,
    metrics: Annotated[list[Annotated[str, Field(pattern=_metrics_pattern(STEP_METRICS))]] | None, Query(
        description=f"Only these series (repeat or comma-separate): {', '.join(STEP_METRICS)}."
    )] = None,
    cursor: Cursor = None,
    format: Format = None,
) -> StreamingResponse:
    q = _query(settings, start_step, end_step, max_points, cursor)
    return _response(request, metrics_page(session, job_id, q, principal=principal, metrics=metrics), format)


@router.get(
    "/{job_id}/diagnostics",
    response_model=DiagnosticReport,
    operation_id="getDiagnostics",
    summary="Diagnosis: did gradients explode, where, when, why, and what to change",
    description="The verdict (`healthy`, `exploding`, `vanishing`, `unstable`, `stalled`), a "
                "summary, the first bad step, findings with their evidence, and ranked "
                "recommendations, each with an RFC 7396 `spec_patch` that "
                "`POST /v1/jobs/{id}/repair` can run. On an unfinished job: a provisional "
                "report (`final: false`) from the records so far.",
    responses=problems(404),
)
def get_diagnostics(job_id: str, session: ReadSessionDep, settings: SettingsDep,
                    principal: PrincipalDep) -> Any:
    return diagnostics(session, job_id, settings, principal)
