"""Following a server-sent event stream: the :class:`SSEParser` that turns
``text/event-stream`` lines into :class:`~client.models.Event` objects, and the
:class:`EventStream` that resumes after a dropped connection (``Last-Event-ID``) with backoff.

Shared by the sync and async clients' ``follow`` through :mod:`client._operations`.
"""

from __future__ import annotations

import json

import httpx

from client.errors import ApiError
from client.models import Event
from client.transport import Backoff

__all__ = ["EventStream", "SSEParser"]


class EventStream:
    """The state of following a job's (or, ``kind="sweep"``, a sweep's) events across
    reconnections: the last event id (sent as ``Last-Event-ID``, so no event is lost or
    repeated) and the drops in a row."""

    def __init__(self, job_id: str, last_event_id: int | None, backoff: Backoff, *,
                 kind: str = "job") -> None:
        self.job_id = job_id
        self.kind = kind
        self.path = f"/v1/{kind}s/{job_id}/events"
        self.last = last_event_id
        self.failures = 0
        self.backoff = backoff

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last is not None:
            headers["Last-Event-ID"] = str(self.last)
        return headers

    @staticmethod
    def timeout(http: httpx.Client | httpx.AsyncClient) -> httpx.Timeout:
        return httpx.Timeout(http.timeout.connect, read=60.0)

    @staticmethod
    def refuse(response: httpx.Response) -> None:
        """A non-200 answer (its body read): ApiError, or a 503 to reconnect after."""
        if response.status_code != 503:
            raise ApiError.from_response(response)
        raise httpx.RemoteProtocolError("503")

    def feed(self, parser: SSEParser, line: str) -> Event | None:
        event = parser.feed(line)
        if event is not None:
            self.failures = 0
            if event.id is not None:
                self.last = event.id
        return event

    def dropped(self) -> float:
        """Dropped, or ended without a terminal event: the wait before resuming."""
        self.failures += 1
        if self.failures > self.backoff.retries:
            raise ConnectionError(f"lost the event stream of {self.kind} {self.job_id} "
                                  f"{self.failures} times in a row")
        return self.backoff.delay(self.failures)


class SSEParser:
    """Incremental ``text/event-stream`` parser: feed lines, get :class:`Event` objects."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and self._id is None:
                self._reset()
                return None
            raw = "\n".join(self._data)
            event = Event(int(self._id) if self._id and self._id.isdigit() else None,
                          self._event, json.loads(raw) if raw else {})
            self._reset()
            return event
        if line.startswith(":"):
            return None  # a comment (keep-alive ping)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None
