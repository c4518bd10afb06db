"""Correlation ids: ``X-Request-ID`` on every response, and JSON-lines logs that carry it.

A request's id is the client's ``X-Request-ID`` when it is a sane token (1-128 characters
of letters, digits and ``._:-``), else a new UUID. It is kept in a context variable for the
request's duration, so every log line written while serving it names it; the job created by
the request stores it (``jobs.request_id``) and the worker that runs the job logs it with
the job id (:func:`bind`), with the job's tenant.

The tenant of an authenticated request is a context variable too: the principal dependency
(:func:`app.deps.require_api_key`, async; the key check itself runs in a worker thread) sets
it with :func:`set_request_tenant` in the request's task, so every later line of the request
names it — sync dependencies and endpoints (the thread pool runs them in a copy of the
task's context), async code and uvicorn's access line (written when the response starts).
:class:`RequestIdMiddleware` owns the request's scope: it starts every request with no
tenant and resets both variables when the request ends, so a tenant never reaches the next
request (keep-alive connections included). An exception nothing inside handled is answered
there too (the app's 500, ``on_error``), before the variables are reset: the 500 carries the
request's ``X-Request-ID`` and its "unhandled error" log line the id and the tenant.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "HEADER",
    "JsonFormatter",
    "RequestIdMiddleware",
    "bind",
    "configure_logging",
    "current_request_id",
    "set_request_tenant",
]

HEADER = "X-Request-ID"
ErrorResponder = Callable[[Request, Exception], Awaitable[Response]]
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gradwatch_request_id", default=None)
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gradwatch_job_id", default=None)
_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gradwatch_tenant", default=None)


def current_request_id() -> str | None:
    """The id of the request being served (or of the request that created the running job)."""
    return _request_id.get()


def set_request_tenant(tenant: str | None) -> None:
    """The request being served is the ``tenant``'s (None: the admin or an open server).

    Call it in the request's task (an async dependency), not in a worker thread: a thread
    runs in a copy of the task's context, so what it sets is lost when it returns. It lasts
    until the request ends (:class:`RequestIdMiddleware` resets it).
    """
    _tenant.set(tenant)


@contextmanager
def bind(*, request_id: str | None = None, job_id: str | None = None,
         tenant: str | None = None) -> Iterator[None]:
    """Log lines written inside carry these ids (a worker binds its job's ids)."""
    tokens = [(_request_id, _request_id.set(request_id)), (_job_id, _job_id.set(job_id)),
              (_tenant, _tenant.set(tenant))]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class RequestIdMiddleware:
    """Echo a valid ``X-Request-ID`` or generate one; set it for the request's log lines.

    Every request starts with no tenant (:func:`set_request_tenant` names it once the key is
    checked); both variables are reset when the request ends."""

    def __init__(self, app: ASGIApp, on_error: ErrorResponder | None = None) -> None:
        """``on_error``: the response to an exception nothing inside handled (the app's 500),
        sent from here while the request's id and tenant are still set, so that the 500 and
        its log line carry them (Starlette's own handler runs outside every middleware)."""
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                given = value.decode("latin-1").strip()
                break
        request_id = given if given and _VALID.fullmatch(given) else uuid.uuid4().hex

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        request_token = _request_id.set(request_id)
        tenant_token = _tenant.set(None)  # whatever the task's context held before
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if self.on_error is None or started:
                raise  # (a response under way cannot be replaced: the server logs it)
            response = await self.on_error(Request(scope), exc)
            await response(scope, receive, send_with_id)
        finally:
            _tenant.reset(tenant_token)
            _request_id.reset(request_token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, job_id, tenant
    (and the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _request_id.get(),
            "job_id": _job_id.get(),
            "tenant": _tenant.get(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    """Root logging for the ``gradwatch`` commands: JSON lines (default) or plain text, on
    stderr; uvicorn's loggers use the same handler."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True

