"""One API request as a :class:`Call`: what to send, how to parse the answer, and whether and
when to resend it.

:func:`finish` turns an answer into the parsed result, an :class:`~client.errors.ApiError`,
or a :class:`Retry` (a 503 before the last attempt); :meth:`Call.after_error` decides after a
transport error. Shared by the sync and async clients through :mod:`client._operations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from client.errors import ApiError
from client.transport import NOT_SENT, Attempt, Download, FileBody

T = TypeVar("T")

__all__ = ["Call", "Retry", "check", "finish"]


@dataclass
class Call(Generic[T]):
    """One HTTP request and how to turn its response into a ``T``."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    ok: tuple[int, ...] = (200, 201, 202)
    #: safe to resend after a dropped connection (GETs, and POSTs with an Idempotency-Key)
    retry_safe: bool = True
    #: a body streamed from a file (instead of ``json``)
    upload: FileBody | None = None
    #: stream a successful response's body into this file (``parse`` then gets the response)
    download: Download | None = None

    def request(self, http: httpx.Client | httpx.AsyncClient, *, sync: bool) -> httpx.Request:
        """The request of one attempt (an upload's body is read afresh for each)."""
        content: Any = None
        if self.upload is not None:
            content = self.upload.chunks() if sync else self.upload.achunks()
        return http.build_request(self.method, self.path, params=self.params, json=self.json,
                                  headers=self.headers, content=content)

    def sink(self, response: httpx.Response) -> Download | None:
        """Where this response's body goes: :attr:`download` for a success (else None: read
        it whole, e.g. a problem+json)."""
        return self.download if response.status_code in self.ok else None

    def after_error(self, attempt: Attempt, exc: Exception) -> float:
        """Seconds to wait before resending after a transport error; re-raises it when the
        request must not be resent (the last attempt, or a non-idempotent request that may
        have reached the server)."""
        if attempt.last or not (self.retry_safe or isinstance(exc, NOT_SENT)):
            raise exc
        return attempt.delay()


class Retry(float):
    """Seconds to wait before resending (kept apart from any parsed answer)."""


def finish(call: Call[T], response: httpx.Response, attempt: Attempt) -> Retry | T:
    """A 503 before the last attempt: :class:`Retry`; else the parsed answer or ApiError."""
    if response.status_code == 503 and not attempt.last:
        return Retry(attempt.delay(response.headers.get("Retry-After")))
    return call.parse(check(response, call.ok))


def check(response: httpx.Response, ok: tuple[int, ...]) -> httpx.Response:
    if response.status_code not in ok:
        raise ApiError.from_response(response)
    return response
