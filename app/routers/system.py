"""Health, readiness and preflight (the data sets: app.routers.datasets)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from app.blobstore import blob_store
from app.datasets import attach_uploaded, uploaded_lookup
from app.deps import PrincipalDep, ReadSessionDep, SettingsDep, require_api_key
from app.routers.common import SPEC_REQUEST_BODY, json_body, problems
from app.schemas import Health
from app.services import readiness
from app.specs import preflight_spec, validate_spec
from core.diagnostics import PreflightReport

health_router = APIRouter(tags=["health"])
router = APIRouter(prefix="/v1", tags=["specs"], dependencies=[Depends(require_api_key)])


@health_router.get("/healthz", response_model=Health, operation_id="healthz",
                   summary="Liveness", description="200 while the process serves HTTP. "
                   "Never requires the API key.")
def healthz() -> dict[str, Any]:
    return {"status": "ok", "checks": {}}


@health_router.get("/readyz", response_model=Health, operation_id="readyz",
                   summary="Readiness",
                   description="200 when the database answers, its schema is current, its "
                               "write lock is free within 1 s (SQLite: no stuck writer), the "
                               "executor accepts jobs and the sweeper runs; otherwise 503 "
                               "problem+json naming what is wrong.",
                   responses=problems(503, keyed=False))
def readyz(request: Request) -> dict[str, Any]:
    state = request.app.state
    return readiness(state.sessionmaker, state.settings, head_revision=state.head_revision,
                     executor=state.executor, dispatcher=state.dispatcher)


@router.post(
    "/preflight",
    response_model=PreflightReport,
    operation_id="preflightSpec",
    summary="Analyse a spec without training it",
    description="Parameter count, FLOPs and memory estimates, the predicted (and probe-"
                "measured) gradient amplification through the layers at initialisation, the "
                "risk of explosion, and recommendations with spec patches. Nothing is stored. "
                "Specs estimated above GRADWATCH_MAX_JOB_MEMORY_BYTES are a 422; the probe "
                "pass runs only up to GRADWATCH_PREFLIGHT_PROBE_MAX_BYTES (else "
                "`measured_amplification` is null).",
    responses=problems(413, 415, 422),
    openapi_extra=SPEC_REQUEST_BODY,
)
def preflight_endpoint(body: Annotated[Any, Depends(json_body)], settings: SettingsDep,
                       session: ReadSessionDep, principal: PrincipalDep) -> Any:
    spec = validate_spec(body, settings, uploaded=uploaded_lookup(session, principal))
    return preflight_spec(attach_uploaded(spec, blob_store(settings)), settings)

