"""/v1/jobs/{id}/gradients, /metrics and /diagnostics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import Field

from app.deps import PrincipalDep, ReadSessionDep, SettingsDep
from app.downsampling import LAYER_METRICS, STEP_METRICS
from app.errors import SpecValidationError
from app.jsonutil import in_blocks, iter_json
from app.routers.common import MAX_STEP, problems
from app.schemas import GradientHistory, MetricsHistory
from app.services import HistoryQuery, diagnostics, gradient_history, metrics_history
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

StartStep = Annotated[int | None, Query(ge=0, le=MAX_STEP,
                                        description="First step (inclusive).")]
EndStep = Annotated[int | None, Query(ge=0, le=MAX_STEP, description="Last step (inclusive); "
                                      "422 when before `start_step`.")]
MaxPoints = Annotated[int, Query(ge=10, description="At most this many points per series "
                                 "(at most GRADWATCH_MAX_HISTORY_POINTS).")]


def _metrics_pattern(names: tuple[str, ...]) -> str:
    one = "|".join(names)
    return f"^(({one})(,({one}))*)?$"


def _query(settings: Any, start: int | None, end: int | None, max_points: int) -> HistoryQuery:
    if max_points > settings.max_history_points:
        raise SpecValidationError(
            f"max_points is {max_points}; the limit is {settings.max_history_points} "
            "(GRADWATCH_MAX_HISTORY_POINTS)", slug="limit-exceeded",
            errors=[{"loc": ["query", "max_points"], "msg": "limit exceeded",
                     "type": "limit_exceeded"}])
    return HistoryQuery(start, end, max_points, settings.max_history_values)


def _streamed(body: dict[str, Any]) -> StreamingResponse:
    """The history as JSON, encoded series by series (never one big string)."""
    return StreamingResponse(in_blocks(iter_json(body)), media_type="application/json")


@router.get(
    "/{job_id}/gradients",
    response_model=GradientHistory,
    operation_id="getGradientHistory",
    summary="Per-layer gradient norms and statistics",
    description="Per layer and step: `grad_norm` (all of the layer's parameters, before "
                "clipping), `weight_grad_norm`, `weight_norm`, `update_norm`, `act_mean`, "
                "`act_std`, `dead_fraction`, `saturated_fraction`. " + _DOWNSAMPLING,
    responses=problems(404, 422),
)
def gradients(
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
) -> StreamingResponse:
    q = _query(settings, start_step, end_step, max_points)
    return _streamed(gradient_history(session, job_id, q, principal=principal, layer=layer,
                                      metrics=metrics))


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsHistory,
    operation_id="getMetricsHistory",
    summary="Loss, global gradient norm, learning rate; epoch figures",
    description="Per step: `loss`, `grad_norm` (global L2 norm before clipping), "
                "`clipped_grad_norm`, `lr`; per epoch (never downsampled): training loss, "
                "validation loss and accuracy. " + _DOWNSAMPLING,
    responses=problems(404, 422),
)
def metrics(
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
) -> StreamingResponse:
    q = _query(settings, start_step, end_step, max_points)
    return _streamed(metrics_history(session, job_id, q, principal=principal, metrics=metrics))


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
