"""/v1/jobs/{id}/events: server-sent events, replayed from the start, resumable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.deps import PrincipalDep, SettingsDep
from app.jsonutil import dumps
from app.lifecycle import TERMINAL
from app.routers.common import MAX_EVENT_ID, problems
from app.schemas import JobSummary
from app.services import job_events, job_snapshot

router = APIRouter(prefix="/v1/jobs", tags=["events"])

_DESCRIPTION = """\
A `text/event-stream` of what happens to the job. Every event has an `id` that increases
monotonically per job, an `event` type and JSON `data`:

* `snapshot` — first event of a new subscription (id `0`): the job as `GET /v1/jobs/{id}`
  shows it now (status, progress, latest figures).
* then **every event the job had so far** (ids 1, 2, ...), so even a job that finished in a
  tenth of a second shows its `status` events, followed by the live ones:
* `status` — a status change: `{"status", "terminal", "requeued", "stop_reason", "verdict",
  "error", "attempts", "cancel_requested", "reason", "progress"}` (one shape for all); a
  cancel request on a running job is a `status` event with `cancel_requested: true`;
* `progress` — throttled (GRADWATCH_PROGRESS_EVENT_INTERVAL_SECONDS): steps done / total
  (`progress.step` counts completed steps) and the latest figures (`latest.step` is the
  index of the last recorded step, so `progress.step - 1` when it was recorded);
* `alert` — the online monitor's detector fired (a finding: kind, severity, step, layers,
  evidence, message).

The stream ends after the terminal `status` event (succeeded, failed or cancelled). To resume
after a disconnect send `Last-Event-ID` (or `?last_event_id=`): you get the events after it
and no snapshot. Non-finite numbers are the strings "NaN", "Infinity", "-Infinity".
"""

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event.",
    "properties": {
        "event": {"type": "string", "enum": ["snapshot", "status", "progress", "alert"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "description": "JSON (see the description)."},
    },
    "required": ["event", "id", "data"],
}


@router.get(
    "/{job_id}/events",
    operation_id="streamJobEvents",
    summary="Stream the job's events (SSE)",
    description=_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={200: {"description": "An event stream.",
                     "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}}},
               **problems(404, 422)},
)
async def stream_events(
    job_id: str,
    request: Request,
    settings: SettingsDep,
    principal: PrincipalDep,
    last_event_id_header: Annotated[str | None, Header(
        alias="Last-Event-ID", pattern=r"^[0-9]{0,9}$",
        description="Resume after this event id (the `id` of the last event received).")] = None,
    last_event_id: Annotated[int | None, Query(
        ge=0, le=MAX_EVENT_ID, description="Resume after this event id (same as "
                                           "Last-Event-ID).")] = None,
) -> EventSourceResponse:
    factory = request.app.state.sessionmaker
    resume = last_event_id
    if last_event_id_header:
        resume = int(last_event_id_header)
    # 404 if there is none (or it is another tenant's)
    snapshot = await to_thread.run_sync(job_snapshot, factory, job_id, principal)
    poll = settings.events_poll_seconds

    async def stream() -> AsyncIterator[ServerSentEvent]:
        seq = resume
        if seq is None:
            data = JobSummary.model_validate(snapshot).model_dump_json()
            yield ServerSentEvent(data=data, event="snapshot", id="0")
            seq = 0
        while True:
            events, status = await to_thread.run_sync(job_events, factory, job_id, seq)
            for event_seq, type_, data in events:
                yield ServerSentEvent(data=dumps(data), event=type_, id=str(event_seq))
                seq = event_seq
                if type_ == "status" and data.get("terminal"):
                    return
            if status is None:  # deleted while streaming
                return
            if not events:
                if status in TERMINAL:  # terminal event already delivered before `seq`
                    return
                if await request.is_disconnected():
                    return
                await anyio.sleep(poll)

    return EventSourceResponse(stream(), ping=int(max(1, settings.events_ping_seconds)),
                               headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
