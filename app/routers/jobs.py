"""/v1/jobs: submit, list, get, cancel, delete, repair, compare."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Response

from app.datasets import uploaded_lookup
from app.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep
from app.routers.common import SPEC_REQUEST_BODY, TenantFilter, json_body, problems
from app.schemas import Comparison, JobPage, JobRead, JobStatus, RepairRequest, Verdict
from app.services import (
    Submitted,
    cancel_job,
    compare,
    delete_job,
    get_job,
    job_to_read,
    job_to_summary,
    list_jobs,
    repair_job,
    submit_job,
)
from app.specs import validate_spec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255,
           description="Makes the request safe to retry: the same key with the same spec "
                       "returns the same job (200); with a different spec, 422; while the "
                       "first request is still being created, 409. A key lives as long as its "
                       "job."),
]


@router.post(
    "",
    status_code=202,
    response_model=JobRead,
    operation_id="createJob",
    summary="Submit a training job",
    description=(
        "Validates the spec (422 with field paths; limits are checked before anything is "
        "allocated), stores a `queued` job and hands it to a worker. Answers **202** with the "
        "job and a `Location` header; poll it, or stream `/events`. The job's `spec` echoes "
        "every default. With `Idempotency-Key`, a retry returns the existing job with **200**. "
        "The job belongs to the key's tenant; past the tenant's queued-jobs quota, **429** "
        "with `Retry-After`."
    ),
    responses={200: {"description": "Idempotent replay: the job created by an earlier request "
                                    "with the same Idempotency-Key.", "model": JobRead},
               **problems(409, 413, 415, 422, 429)},
    openapi_extra=SPEC_REQUEST_BODY,
)
def create_job(
    body: Annotated[Any, Depends(json_body)],
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    spec = validate_spec(body, settings, uploaded=uploaded_lookup(session, principal))
    submitted = submit_job(session, spec=spec, settings=settings, tenant=principal.tenant,
                           idempotency_key=idempotency_key)
    session.commit()  # the commit sends the new job to the executor (app.dispatch)
    return _submitted(submitted, response)


def _submitted(submitted: Submitted, response: Response) -> dict[str, Any]:
    job = submitted.job
    if not submitted.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return {**job_to_read(job), "notify_secret": submitted.notify_secret}


@router.get(
    "",
    response_model=JobPage,
    operation_id="listJobs",
    summary="List jobs, newest first",
    description="Filter by `status` and `verdict` (repeat a parameter for several values) or "
                "by `parent_id` (the repairs of a job); `sweep_members=false` leaves out the "
                "members of sweeps (`GET /v1/sweeps/{id}` lists them). Pages with an opaque `cursor`: pass "
                "the previous page's `next_cursor`. Items omit the spec; GET the job for it. "
                "A tenant's key lists that tenant's jobs only; the admin sees every job (or "
                "one tenant's with `tenant`).",
    responses=problems(422),
)
def list_jobs_endpoint(
    session: ReadSessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    status: Annotated[list[JobStatus] | None, Query(description="Only these statuses.")] = None,
    verdict: Annotated[list[Verdict] | None, Query(description="Only these verdicts.")] = None,
    parent_id: Annotated[str | None, Query(description="Only repairs of this job.")] = None,
    sweep_members: Annotated[bool, Query(
        description="false: leave out the jobs that are members of a sweep.")] = True,
    tenant: TenantFilter = None,
) -> dict[str, Any]:
    items, next_cursor = list_jobs(session, principal=principal, limit=limit, cursor=cursor,
                                   statuses=status or [], verdicts=verdict or [],
                                   parent_id=parent_id, tenant=tenant,
                                   sweep_members=sweep_members)
    return {"items": [job_to_summary(j) for j in items], "next_cursor": next_cursor}


@router.get(
    "/{job_id}",
    response_model=JobRead,
    operation_id="getJob",
    summary="Get a job",
    description="Status, progress (steps done / total), the latest recorded figures, the "
                "first non-finite value seen, stop reason, verdict, error and the echoed spec.",
    responses=problems(404),
)
def get_job_endpoint(job_id: str, session: ReadSessionDep, principal: PrincipalDep
                     ) -> dict[str, Any]:
    return job_to_read(get_job(session, job_id, principal))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobRead,
    operation_id="cancelJob",
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running job is flagged and its worker "
                "stops within one flush (GRADWATCH_FLUSH_EVERY_STEPS / "
                "GRADWATCH_FLUSH_INTERVAL_SECONDS), keeping what it recorded. 409 when the "
                "job already finished.",
    responses=problems(404, 409),
)
def cancel_job_endpoint(job_id: str, session: SessionDep, principal: PrincipalDep
                        ) -> dict[str, Any]:
    job = cancel_job(session, job_id, principal)
    session.commit()
    return job_to_read(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    operation_id="deleteJob",
    summary="Delete a finished job",
    description="Deletes the job, its history, events and diagnosis, and frees its "
                "Idempotency-Key. Only terminal jobs (succeeded, failed, cancelled): cancel a "
                "running job first (409 otherwise). Afterwards the job is 404.",
    responses=problems(404, 409),
)
def delete_job_endpoint(job_id: str, session: SessionDep, principal: PrincipalDep) -> Response:
    delete_job(session, job_id, principal)
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{job_id}/repair",
    status_code=202,
    response_model=JobRead,
    operation_id="repairJob",
    summary="Run a recommended fix as a new job",
    description="Applies a recommendation's `spec_patch` (RFC 7396 merge patch) from the job's "
                "diagnosis — the first one by default, or `recommendation: i` — or your own "
                "`spec_patch`, to the job's spec and submits the result as a child job "
                "(`parent_id` links it). Compare the two with `/comparison`.",
    responses={200: {"description": "Idempotent replay.", "model": JobRead},
               **problems(404, 409, 422, 429)},
)
def repair_job_endpoint(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    response: Response,
    request: Annotated[RepairRequest | None, Body(openapi_examples={
        "first recommendation": {"summary": "Apply the top recommendation", "value": {}},
        "pick one": {"summary": "Apply recommendation 1", "value": {"recommendation": 1}},
        "own patch": {"summary": "Your own merge patch",
                      "value": {"spec_patch": {"clipping": {"mode": "global_norm",
                                                            "max_norm": 1.0}}}},
    })] = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    req = request or RepairRequest()
    submitted = repair_job(session, job_id, settings, principal=principal,
                           recommendation=req.recommendation,
                           spec_patch=req.spec_patch, idempotency_key=idempotency_key)
    session.commit()
    return _submitted(submitted, response)


@router.get(
    "/{job_id}/comparison",
    response_model=Comparison,
    operation_id="compareJobs",
    summary="Compare a job with its repair",
    description="Key figures of both runs side by side: verdict, stop reason, final and "
                "minimum loss, peak gradient norm and its step, first bad step, first "
                "non-finite step, validation figures, runtime. `job_id` may be either the "
                "original (its latest repair is used) or the repair; `other` picks the second "
                "job explicitly.",
    responses=problems(404),
)
def compare_endpoint(
    job_id: str, session: ReadSessionDep, settings: SettingsDep, principal: PrincipalDep,
    other: Annotated[str | None, Query(description="The job to compare with.")] = None,
) -> dict[str, Any]:
    return compare(session, job_id, settings, principal=principal, other=other)
