"""/v1/jobs/{id}/metrics.csv and /gradients.csv (and .parquet): every recorded point,
streamed as CSV or Parquet."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.deps import PrincipalDep, ReadSessionDep
from app.exports import CSV_COLUMNS, PARQUET, Table, csv_rows, parquet_file
from app.routers.common import problems
from app.services import get_job
from app.tenancy import Principal

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["exports"])

_FORMAT = (
    "Streamed, never downsampled: every recorded step, header row first. Numbers read back "
    "to the same float64 (shortest round-trip text); NaN and ±Inf are written `nan`, `inf`, "
    "`-inf` (`pandas.read_csv` and `float()` read them); an empty cell is a statistic that "
    "was not recorded. A running job's export holds the steps stored when it began."
)


def _csv_response(columns: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "CSV with a header row.",
                  "content": {"text/csv": {"schema": {"type": "string"},
                                           "example": columns}}},
            **problems(404, 422)}


def _download(request: Request, session: Any, principal: Principal, job_id: str, table: Table,
              kind: Literal["csv", "parquet"]) -> StreamingResponse:
    """The job's ``table`` streamed as a ``kind`` file (404 before the download starts)."""
    get_job(session, job_id, principal)
    # the body reads in sessions of its own while it streams, after this function returned:
    # give this one's connection back first, or every download would hold two at once
    session.close()
    factory = request.app.state.sessionmaker
    body = csv_rows(factory, job_id, table) if kind == "csv" else parquet_file(factory, job_id,
                                                                              table)
    return StreamingResponse(
        body, media_type="text/csv; charset=utf-8" if kind == "csv" else PARQUET,
        headers={"Content-Disposition": f'attachment; filename="{job_id}-{table}.{kind}"'})


@router.get(
    "/{job_id}/metrics.csv",
    operation_id="exportMetricsCsv",
    summary="Export the step metrics as CSV",
    description="One row per recorded step: `" + ",".join(CSV_COLUMNS["metrics"]) + "` "
                "(`clipped`: `true`/`false`). " + _FORMAT,
    response_class=StreamingResponse,
    responses=_csv_response(",".join(CSV_COLUMNS["metrics"]) + "\n"),
)
def export_metrics(job_id: str, request: Request, session: ReadSessionDep,
                   principal: PrincipalDep) -> StreamingResponse:
    return _download(request, session, principal, job_id, "metrics", "csv")


@router.get(
    "/{job_id}/gradients.csv",
    operation_id="exportGradientsCsv",
    summary="Export the per-layer gradient history as CSV",
    description="Long format, one row per recorded step and layer: `"
                + ",".join(CSV_COLUMNS["gradients"]) + "` (layer 0 is the first hidden layer, "
                "the last the output layer; `df.pivot(index=\"step\", columns=\"layer\", "
                "values=\"grad_norm\")` gives one column per layer). " + _FORMAT,
    response_class=StreamingResponse,
    responses=_csv_response(",".join(CSV_COLUMNS["gradients"]) + "\n"),
)
def export_gradients(job_id: str, request: Request, session: ReadSessionDep,
                     principal: PrincipalDep) -> StreamingResponse:
    return _download(request, session, principal, job_id, "gradients", "csv")


_PARQUET_FORMAT = (
    "The same rows and columns as the CSV export, as an Apache Parquet file (zstd), typed: "
    "`step`, `epoch`, `layer` int64, the statistics float64 (NaN, ±Inf and -0.0 exactly as "
    "stored), `clipped` bool; null is a statistic that was not recorded. Streamed, never "
    "downsampled, written a bounded window of steps (one row group) at a time; "
    "`pandas.read_parquet` or `pyarrow.parquet.read_table` read it. A running job's export "
    "holds the steps stored when it began."
)


def _parquet_response() -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "A Parquet file.",
                  "content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}}},
            **problems(404, 422)}


@router.get(
    "/{job_id}/metrics.parquet",
    operation_id="exportMetricsParquet",
    summary="Export the step metrics as Parquet",
    description="One row per recorded step: `" + ", ".join(CSV_COLUMNS["metrics"]) + "`. "
                + _PARQUET_FORMAT,
    response_class=StreamingResponse,
    responses=_parquet_response(),
)
def export_metrics_parquet(job_id: str, request: Request, session: ReadSessionDep,
                           principal: PrincipalDep) -> StreamingResponse:
    return _download(request, session, principal, job_id, "metrics", "parquet")


@router.get(
    "/{job_id}/gradients.parquet",
    operation_id="exportGradientsParquet",
    summary="Export the per-layer gradient history as Parquet",
    description="Long format, one row per recorded step and layer: `"
                + ", ".join(CSV_COLUMNS["gradients"]) + "` (as the CSV export). "
                + _PARQUET_FORMAT,
    response_class=StreamingResponse,
    responses=_parquet_response(),
)
def export_gradients_parquet(job_id: str, request: Request, session: ReadSessionDep,
                             principal: PrincipalDep) -> StreamingResponse:
    return _download(request, session, principal, job_id, "gradients", "parquet")
