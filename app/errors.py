"""RFC 9457 problem details: one error base class, and handlers so nothing else escapes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.db import is_locked_error

__all__ = [
    "PROBLEM_JSON",
    "ConflictError",
    "NotFoundError",
    "ProblemError",
    "SpecValidationError",
    "install_error_handlers",
    "problem_response",
    "validation_errors",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://gradwatch.dev/problems/"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemError(Exception):
    """Base of every error the service raises on purpose; carries its HTTP status."""

    status: int = 400
    slug: str = "bad-request"

    def __init__(self, detail: str, *, status: int | None = None, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
        self.headers = headers or {}
        self.extra = extra


class NotFoundError(ProblemError):
    status, slug = 404, "not-found"


class ConflictError(ProblemError):
    status, slug = 409, "conflict"


class SpecValidationError(ProblemError):
    """422 with the field paths of each error."""

    status, slug = 422, "validation-error"


def problem_response(status: int, detail: str, *, slug: str | None = None,
                     title: str | None = None, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + (slug or _TITLES.get(status, "error").lower().replace(" ", "-")),
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(
        content=json.dumps(body, default=str, allow_nan=False).encode(),
        status_code=status, media_type=PROBLEM_JSON, headers=headers,
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    return str(value)


MAX_ERRORS = 50  # a problem lists at most this many errors (and says how many there were)


def validation_errors(errors: Sequence[Any], prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors as JSON: field path, message, type (inputs are not echoed);
    the first :data:`MAX_ERRORS` of them."""
    out = []
    for err in errors[:MAX_ERRORS]:
        item: dict[str, Any] = {
            "loc": [*prefix, *err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", "value_error"),
        }
        ctx = err.get("ctx")
        if isinstance(ctx, dict):
            item["ctx"] = {k: _json_safe(v) for k, v in ctx.items() if k != "error"}
        out.append(item)
    return out


def _summary(errors: list[dict[str, Any]], total: int) -> str:
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"]) or "request"
    more = f" (and {total - 1} more)" if total > 1 else ""
    return f"{where}: {first['msg']}{more}"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the application accepts on the request's path (Starlette
    names those of the first route matching the path only)."""
    routes = request.app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in routes)]


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as application/problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        return problem_response(exc.status, exc.detail, slug=exc.slug,
                                instance=request.url.path, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        raw = exc.errors()
        errors = validation_errors(raw)
        return problem_response(422, _summary(errors, len(raw)), slug="validation-error",
                                instance=request.url.path, errors=errors,
                                errors_total=len(raw))

    @app.exception_handler(ValidationError)
    async def _pydantic_validation(request: Request, exc: ValidationError) -> Response:
        errors = validation_errors(exc.errors())
        return problem_response(422, _summary(errors, exc.error_count()),
                                slug="validation-error", instance=request.url.path,
                                errors=errors, errors_total=exc.error_count())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route for {request.method} {request.url.path}"
        if exc.status_code == 400 and "parsing the body" in detail:
            # FastAPI's answer to a body it cannot decode: bad input like any other (422)
            msg = "invalid JSON: the body could not be decoded"
            return problem_response(422, msg, slug="invalid-json", instance=request.url.path,
                                    errors=[{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
        if exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            detail = (f"{request.method} is not allowed on {request.url.path}; "
                      f"allowed: {', '.join(allowed)}")
        return problem_response(exc.status_code, detail, instance=request.url.path,
                                headers=headers)

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError) -> Response:
        if is_locked_error(exc):
            log.warning("database busy on %s %s", request.method, request.url.path)
            return problem_response(503, "the database is busy; retry shortly",
                                    slug="database-busy", headers={"Retry-After": "1"},
                                    instance=request.url.path)
        log.exception("database error on %s %s", request.method, request.url.path)
        return problem_response(503, "the database is unavailable; retry shortly",
                                slug="database-unavailable", headers={"Retry-After": "5"},
                                instance=request.url.path)

    @app.exception_handler(PoolTimeoutError)
    async def _pool_exhausted(request: Request, exc: PoolTimeoutError) -> Response:
        # every connection of this process's pool stayed in use for the pool's timeout:
        # overload, not a bug (GRADWATCH_DB_POOL_SIZE / _MAX_OVERFLOW size the pool)
        log.warning("no database connection came free on %s %s: %s", request.method,
                    request.url.path, exc)
        return problem_response(503, "the server is busy: no database connection came free "
                                     "in time; retry shortly",
                                slug="database-busy", headers={"Retry-After": "1"},
                                instance=request.url.path)

    # a fallback: RequestIdMiddleware answers unhandled errors first (with the request's id)
    app.add_exception_handler(Exception, unexpected_error)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """The 500 for a bug: logged with its traceback, answered as problem+json."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    # the connection is closed after an unhandled error: say so, so that a keep-alive client
    # opens a new one instead of failing its next request
    return problem_response(500, f"unexpected {type(exc).__name__}; the error was logged",
                            slug="internal-error", instance=request.url.path,
                            headers={"Connection": "close"})
