"""/v1/sweeps: a spec swept over axes; every member is a job, trained batched by group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from anyio import to_thread
from fastapi import APIRouter, Body, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep
from app.errors import NotFoundError
from app.jsonutil import dumps
from app.models import Webhook
from app.routers.common import TenantFilter, problems
from app.schemas import JobRead, SweepPage, SweepStatus, SweepSummary
from app.services import job_to_read
from app.stability_plot import render_stability_map
from app.sweep_launch import SweepLaunch, launch_member
from app.sweep_schemas import SweepCreated, SweepRead
from app.sweeps import (
    SweepCreate,
    cancel_sweep,
    delete_sweep,
    get_sweep,
    list_sweeps,
    stability,
    submit_sweep,
    sweep_summaries,
    sweep_to_read,
)
from app.tenancy import Principal

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

_JSON = "application/json"

SweepIdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255,
           description="Makes the request safe to retry, as on `POST /v1/jobs`: the same key "
                       "with the same request returns what the first one created (200); with a "
                       "different request, 422; while the first request is still being "
                       "created, 409. Keys are per tenant; a key lives as long as what it "
                       "created."),
]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, media_type=_JSON, headers=headers)


@router.post(
    "", status_code=202, operation_id="createSweep", summary="Sweep a spec over axes",
    description=(
        "Each axis is a dotted spec path (`optimizer.lr`, `model.init.std`, `seed`, "
        "`clipping.max_norm`, `model.depth` = repeat the first hidden layer n times, ...) with "
        "`values` or `log_range` + `points`. Every grid point becomes a queued job with "
        "`parent_sweep_id`; members of one architecture train as one batched computation. "
        "The member count (`max_members`) and total steps (`max_total_steps`) are checked "
        "before anything is created (422 naming the limit). Every member counts against the "
        "tenant's queued-jobs quota (429 with `Retry-After`, nothing created). Answers 202 "
        "with `Location`. With `Idempotency-Key`, a retry returns the existing sweep with "
        "**200** (no new member). A base spec's `notify` gives the sweep one webhook "
        "(`/v1/webhooks/{sweep_id}`; the members get none): `sweep.succeeded` / "
        "`sweep.failed` / `sweep.cancelled` once every member finished, as its `job.*` "
        "events ask; its secret is `notify_secret` in the 202 only."),
    response_model=SweepCreated,  # documents the 202 (the handler encodes its dict itself)
    responses={200: {"description": "Idempotent replay: the sweep created by an earlier "
                                    "request with the same Idempotency-Key (`notify_secret` "
                                    "null).", "model": SweepCreated},
               **problems(409, 413, 415, 422, 429)})
def create_sweep_endpoint(body: SweepCreate, session: SessionDep, settings: SettingsDep,
                          principal: PrincipalDep,
                          idempotency_key: SweepIdempotencyKey = None) -> Response:
    sweep, created = submit_sweep(session, body=body, settings=settings, principal=principal,
                                  idempotency_key=idempotency_key)
    session.commit()  # the commit sends the member jobs to the executor (app.dispatch)
    # the secret of the base spec's `notify` webhook: in the answer that created it only
    hook = session.get(Webhook, sweep.id) if created else None
    return _json({**sweep_to_read(session, sweep),
                  "notify_secret": hook.secret if hook is not None else None},
                 202 if created else 200, {"Location": f"/v1/sweeps/{sweep.id}"})


@router.get(
    "",
    response_model=SweepPage,
    operation_id="listSweeps",
    summary="List sweeps, newest first",
    description="Filter by the derived `status` (repeat it for several values). Pages with an "
                "opaque `cursor`: pass the previous page's `next_cursor`. Items omit the "
                "members and the spec (GET the sweep for them) and count the members' "
                "verdicts. A tenant's key lists that tenant's sweeps only; the admin sees "
                "every sweep (or one tenant's with `tenant`).",
    responses=problems(422),
)
def list_sweeps_endpoint(
    session: ReadSessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    status: Annotated[list[SweepStatus] | None, Query(description="Only these statuses.")] = None,
    tenant: TenantFilter = None,
) -> dict[str, Any]:
    items, next_cursor = list_sweeps(session, principal=principal, limit=limit, cursor=cursor,
                                     statuses=status or [], tenant=tenant)
    return {"items": sweep_summaries(session, items), "next_cursor": next_cursor}


MembersQuery = Annotated[bool, Query(
    description="`false`: the sweep without its members and spec — status, progress, "
                "`member_count` and the members' verdict counts, exactly as `listSweeps` "
                "lists it (one aggregate query, whatever the member count): what to poll "
                "while waiting. `true` (default): the whole sweep. A value that is not a "
                "boolean (`true`/`false`, `1`/`0`) is a 422.")]

_GET_SWEEP_200: dict[int | str, dict[str, Any]] = {200: {
    "description": "The sweep with its members; with `members=false`, its list item "
                   "(`SweepSummary`).",
    "model": SweepRead | SweepSummary}}


@router.get("/{sweep_id}", operation_id="getSweep", summary="Get a sweep and its members",
            description="`status` and `progress` follow from the member jobs; `members` has one "
                        "entry per grid point (job id, axis values, status, verdict, first bad "
                        "step, peak-to-baseline gradient growth, final loss, stop reason, "
                        "preflight's predicted risk). With `members=false`, the sweep as the "
                        "list shows it (no members, no spec): light enough to poll.",
            responses={**_GET_SWEEP_200, **problems(404, 422)})
def get_sweep_endpoint(sweep_id: str, session: ReadSessionDep, principal: PrincipalDep,
                       members: MembersQuery = True) -> Response:
    sweep = get_sweep(session, sweep_id, principal)
    if not members:
        item = SweepSummary.model_validate(sweep_summaries(session, [sweep])[0])
        return _json(item.model_dump(mode="json"))
    return _json(sweep_to_read(session, sweep))


@router.post("/{sweep_id}/cancel", status_code=202, operation_id="cancelSweep",
             summary="Cancel a sweep's unfinished members",
             description="Queued members are cancelled now, running ones stop within one flush "
                         "(each with stop reason `cancelled`); 409 when every member has "
                         "finished. Answers 202 with the sweep.",
             responses=problems(404, 409))
def cancel_sweep_endpoint(sweep_id: str, session: SessionDep, principal: PrincipalDep
                          ) -> Response:
    cancel_sweep(session, sweep_id, principal)
    session.commit()
    return _json(sweep_to_read(session, get_sweep(session, sweep_id, principal)), 202)


@router.delete("/{sweep_id}", status_code=204, operation_id="deleteSweep",
               summary="Delete a finished sweep and its member jobs",
               description="Deletes the sweep, its member jobs and their histories; 409 while "
                           "a member is queued or running (cancel the sweep first).",
               responses=problems(404, 409))
def delete_sweep_endpoint(sweep_id: str, session: SessionDep, principal: PrincipalDep
                          ) -> Response:
    delete_sweep(session, sweep_id, principal)
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{sweep_id}/launch", status_code=202, response_model=JobRead, operation_id="launchSweep",
    summary="Launch the real run like a member",
    description="Submits a new job with a member's spec — `member: \"recommended\"` (default: "
                "the stability grid's recommended member over `x`/`y`/`at`, as "
                "`/stability` takes them; 409 with `recommended_reason` when there is none) or "
                "a member index — with `spec_patch` (RFC 7396 merge patch, e.g. more epochs) "
                "applied. The job is not a member (the sweep's status and progress do not "
                "change); its `launched_from` names the sweep, member and member job. Answers "
                "202 with `Location` and the job, as `POST /v1/jobs`; with `Idempotency-Key` "
                "a retry returns the job with 200. 422 for a member that does not exist or a "
                "patched spec that is not valid (`patched_spec.<field>`).",
    responses={200: {"description": "Idempotent replay.", "model": JobRead},
               **problems(404, 409, 422, 429)})
def launch_sweep_endpoint(
    sweep_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
    response: Response,
    body: Annotated[SweepLaunch | None, Body(openapi_examples={
        "recommended": {"summary": "The recommended member as it is", "value": {}},
        "longer": {"summary": "The recommended member, trained longer",
                   "value": {"member": "recommended",
                             "spec_patch": {"training": {"epochs": 200}}}},
        "member": {"summary": "Member 3, named", "value": {"member": 3, "name": "real run"}},
    })] = None,
    idempotency_key: SweepIdempotencyKey = None,
) -> dict[str, Any]:
    submitted = launch_member(session, sweep_id, body or SweepLaunch(), settings,
                              principal=principal, idempotency_key=idempotency_key)
    session.commit()  # the commit sends the new job to the executor (app.dispatch)
    job = submitted.job
    if not submitted.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return {**job_to_read(job), "notify_secret": submitted.notify_secret}


def _at(request: Request) -> dict[str, Any]:
    """``at.<path>=<value>`` query parameters: where the other axes are held (numbers as
    numbers, ``true``/``false`` as booleans, anything else as a string)."""
    out: dict[str, Any] = {}
    for key, raw in request.query_params.items():
        if key.startswith("at."):
            try:
                value: Any = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = {"true": True, "false": False}.get(raw, raw)
            out[key[3:]] = value
    return out


XQuery = Annotated[str | None, Query(description="Axis path across (default: the last axis).")]
YQuery = Annotated[str | None, Query(description="Axis path up (default: the first axis).")]


@router.get("/{sweep_id}/stability", operation_id="getSweepStability",
            summary="The stability grid over two axes, its boundary and preflight calibration",
            description="Per cell the verdict, preflight's risk and the member; per row (each "
                        "`y` value) the largest healthy and the smallest exploding `x` "
                        "(measured and predicted); how often preflight agreed. Other axes are "
                        "held at their first value or at `at.<path>=<value>`. `recommended`: "
                        "the member to launch the real run like (`values`, `job_id`, "
                        "`final_loss`, `margin`, `boundary`, a one-sentence `reason`): the "
                        "healthy member with the lowest final loss that touches no exploding "
                        "or unstable member (one step along either axis); `margin` = steps "
                        "along `x` to the nearest one, `\"none\"` when every healthy member "
                        "touches one; null (no healthy member) with `recommended_reason` "
                        "saying why.",
            responses=problems(404, 409, 422))
def stability_endpoint(sweep_id: str, request: Request, session: ReadSessionDep,
                       principal: PrincipalDep, x: XQuery = None, y: YQuery = None) -> Response:
    return _json(stability(session, sweep_id, x, y, _at(request),
                           principal=principal).to_dict())


@router.get("/{sweep_id}/plots/stability", operation_id="plotSweepStability",
            summary="The stability map (PNG, or SVG with ?format=svg)",
            description="Cells coloured by the members' verdicts over axes `x` and `y`, the "
                        "measured boundary (solid) and preflight's predicted one (dashed, "
                        "hatched cells), a star on the recommended cell. SVG with "
                        "`?format=svg` or `Accept: image/svg+xml`.",
            response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}},
                       **problems(404, 409, 422)})
def stability_plot_endpoint(
    sweep_id: str, request: Request, session: ReadSessionDep, principal: PrincipalDep,
    x: XQuery = None, y: YQuery = None,
    format: Annotated[Literal["png", "svg"] | None, Query(description="png (default) or svg.")
                      ] = None,
) -> Response:
    grid = stability(session, sweep_id, x, y, _at(request), principal=principal)
    fmt: Literal["png", "svg"] = format or (
        "svg" if "image/svg+xml" in request.headers.get("accept", "") else "png")
    fixed = ", ".join(f"{k}={v}" for k, v in grid.fixed.items())
    name = get_sweep(session, sweep_id, principal).name  # loaded already: no new query
    title = (f"{name} (sweep {sweep_id[:8]})" if name else f"sweep {sweep_id[:8]}") + (
        f", {fixed}" if fixed else "")
    image = render_stability_map(grid.x, grid.y, grid.x_values, grid.y_values, grid.verdict,
                                 grid.predicted_exploding(), fmt=fmt,
                                 recommended=grid.recommended_cell(), title=title)
    return Response(image, media_type="image/svg+xml" if fmt == "svg" else "image/png")


def _summary(factory: Any, sweep_id: str, principal: Principal) -> dict[str, Any] | None:
    """The sweep's status, progress and verdict counts; None when it is gone (or, for
    ``principal``, never was)."""
    with factory() as session:
        try:
            sweep = get_sweep(session, sweep_id, principal)
        except NotFoundError:
            return None
        item = sweep_summaries(session, [sweep])[0]  # one aggregate query, not every member
        return {"id": sweep_id, "status": item["status"], "progress": item["progress"],
                "verdicts": item["verdicts"]}


@router.get("/{sweep_id}/events", operation_id="streamSweepEvents",
            summary="Stream the sweep's progress (SSE)",
            description="A `snapshot` event, then a `progress` event whenever the members' "
                        "progress, statuses or verdicts change, then a terminal `status` "
                        "event; ids increase. With `Last-Event-ID` the stream continues after "
                        "that id (without a snapshot).",
            response_class=EventSourceResponse, responses=problems(404))
async def stream_sweep_events(
    sweep_id: str, request: Request, settings: SettingsDep, principal: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    factory = request.app.state.sessionmaker
    first = await to_thread.run_sync(_summary, factory, sweep_id, principal)
    if first is None:
        with factory() as session:
            get_sweep(session, sweep_id, principal)  # raises the 404
    resume = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else None
    poll = settings.events_poll_seconds

    async def stream() -> AsyncIterator[ServerSentEvent]:
        seq = resume or 0
        summary = first
        last: dict[str, Any] | None = None
        while summary is not None:
            terminal = summary["status"] not in ("queued", "running")
            if resume is None and seq == 0:
                seq += 1
                yield ServerSentEvent(data=dumps(summary), event="snapshot", id=str(seq))
            elif summary != last:
                seq += 1
                yield ServerSentEvent(data=dumps(summary), event="progress", id=str(seq))
            last = summary
            if terminal:
                seq += 1
                yield ServerSentEvent(data=dumps({**summary, "terminal": True}), event="status",
                                      id=str(seq))
                return
            if await request.is_disconnected():
                return
            await anyio.sleep(poll)
            summary = await to_thread.run_sync(_summary, factory, sweep_id, principal)

    return EventSourceResponse(stream(), ping=int(max(1, settings.events_ping_seconds)),
                               headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
