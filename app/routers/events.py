"""/v1/jobs/{id}/events: server-sent events, resumable with Last-Event-ID."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.deps import SettingsDep
from app.errors import NotFoundError, SpecValidationError
from app.jsonutil import dumps
from app.repositories import TERMINAL, EventRepository, JobRepository
from app.routers.common import problems
from app.services import job_to_summary

router = APIRouter(prefix="/v1/jobs", tags=["events"])

_DESCRIPTION = """\
A `text/event-stream` of what happens to the job. Every event has an `id` that increases
monotonically per job, an `event` type and JSON `data`:

* `snapshot` — first event of a new subscription: the job as `GET /v1/jobs/{id}` shows it
  (status, progress, latest figures). Its id is the job's latest event id.
* `status` — a status change: `{"status": ..., "terminal": bool, ...}`; a cancel request on a
  running job is a `status` event with `cancel_requested: true`.
* `progress` — throttled (GRADWATCH_PROGRESS_EVENT_INTERVAL_SECONDS): steps done / total and
  the latest loss, global and per-layer gradient norms.
* `alert` — the online monitor's detector fired (a finding: kind, severity, step, layers,
  evidence, message).

The stream ends after the terminal `status` event (succeeded, failed or cancelled). To resume
after a disconnect send `Last-Event-ID` (or `?last_event_id=`): you get the events you missed
and no snapshot. Non-finite numbers are the strings "NaN", "Infinity", "-Infinity".
"""


def _snapshot(factory: Any, job_id: str) -> tuple[int, dict[str, Any], bool] | None:
    with factory() as session:
        job = JobRepository(session).get(job_id)
        if job is None:
            return None
        return job.event_seq, job_to_summary(job), job.status in TERMINAL


def _events_after(factory: Any, job_id: str, seq: int) -> tuple[list[tuple[int, str, Any]], str | None]:
    with factory() as session:
        events = [(e.seq, e.type, e.data) for e in EventRepository(session).since(job_id, seq)]
        status = JobRepository(session).status_of(job_id)
        return events, status


def _summary_json(summary: dict[str, Any]) -> str:
    from app.schemas import JobSummary

    return JobSummary.model_validate(summary).model_dump_json()


@router.get(
    "/{job_id}/events",
    operation_id="streamJobEvents",
    summary="Stream the job's events (SSE)",
    description=_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={200: {"description": "An event stream.",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
               **problems(404, 422)},
)
async def stream_events(
    job_id: str,
    request: Request,
    settings: SettingsDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[int | None, Query(ge=0, description="Resume after this event id "
                                                                 "(same as Last-Event-ID).")] = None,
) -> EventSourceResponse:
    factory = request.app.state.sessionmaker
    resume = last_event_id
    if last_event_id_header is not None and last_event_id_header.strip():
        try:
            resume = int(last_event_id_header)
        except ValueError:
            raise SpecValidationError(
                "Last-Event-ID must be an event id received from this stream",
                errors=[{"loc": ["header", "Last-Event-ID"], "msg": "not an integer",
                         "type": "int_parsing"}]) from None
    first = await to_thread.run_sync(_snapshot, factory, job_id)
    if first is None:
        raise NotFoundError(f"job {job_id} does not exist (or was deleted)", slug="job-not-found")
    poll = settings.events_poll_seconds

    async def stream() -> AsyncIterator[ServerSentEvent]:
        seq = resume
        if seq is None:
            snap_seq, summary, terminal = first
            yield ServerSentEvent(data=_summary_json(summary), event="snapshot", id=str(snap_seq))
            if terminal:
                return
            seq = snap_seq
        while True:
            events, status = await to_thread.run_sync(_events_after, factory, job_id, seq)
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
