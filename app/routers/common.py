"""Shared bits of the routers: error response docs and the spec request body."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Query, Request

from app.errors import PROBLEM_JSON, ProblemError, SpecValidationError
from app.input_guard import check_json_depth, check_no_nul
from app.routers.examples import SPEC_EXAMPLES

# Bounds of integer inputs: what the database's 32-bit INTEGER columns can hold.
MAX_STEP = 2**31 - 1
MAX_EVENT_ID = 999_999_999

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Validation errors (422): field path, message, error type.",
            "items": {"type": "object", "properties": {
                "loc": {"type": "array", "items": {"anyOf": [{"type": "string"},
                                                             {"type": "integer"}]}},
                "msg": {"type": "string"}, "type": {"type": "string"}}},
        },
    },
    "required": ["type", "title", "status", "detail"],
}

TenantFilter = Annotated[str | None, Query(
    max_length=40, pattern="^[a-z0-9-]+$",
    description="Admin only: just this tenant's. A tenant's key always lists its own.")]

_DESCRIPTIONS = {
    401: "Missing, wrong or revoked API key (when the server has keys: GRADWATCH_API_KEY or "
         "tenant keys).",
    403: "Only the admin key (GRADWATCH_API_KEY) may do this.",
    404: "No such resource, it was deleted, or it belongs to another tenant (answered exactly "
         "like a missing one).",
    409: "The job's state does not allow this.",
    413: "The request body exceeds GRADWATCH_MAX_BODY_BYTES.",
    415: "The body is not JSON.",
    422: "Invalid input; `errors` lists each field path. Exceeded limits have type "
         "`limit_exceeded` and name the limit and the value.",
    429: "A tenant quota is used up (`quota` names it, with `limit` and `current`), or too "
         "many failed authentications for the key's id or from this address "
         "(`auth-throttled`); retry after the Retry-After header.",
    503: "The database is busy or unavailable; retry after the Retry-After header.",
}


AUTH_THROTTLED = ("Too many failed authentications for the key's id "
                  "(GRADWATCH_AUTH_MAX_FAILURES) or from this address "
                  "(GRADWATCH_AUTH_MAX_ADDRESS_FAILURES) within "
                  "GRADWATCH_AUTH_FAILURE_WINDOW_SECONDS; retry after the Retry-After header.")


def problems(*codes: int, keyed: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error codes, plus 503 and, for an operation
    behind the key check (``keyed``), 401 and 429."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, 503, *((401, 429) if keyed else ())}):
        description = _DESCRIPTIONS.get(code, "Error.")
        if code == 429 and 429 not in codes:
            description = AUTH_THROTTLED
        out[code] = {"description": description,
                     "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}
        if code in (429, 503):
            out[code]["headers"] = {"Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 0}}}
    return out


SPEC_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A TrainingSpec. Only `data` is required; every other field has a "
                       "default. Numbers must be finite JSON numbers, booleans JSON booleans.",
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/TrainingSpec"},
            "examples": SPEC_EXAMPLES,
        }},
    }
}


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number: every number must be a finite JSON "
                     "number")


def json_body_of(what: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency: the request body parsed as strict JSON (no NaN/Infinity tokens); an
    empty body is a 422 saying to send ``what``."""

    async def body(request: Request) -> Any:
        return await _json_body(request, what)

    return body


async def json_body(request: Request) -> Any:
    """The request body parsed as strict JSON (no NaN/Infinity tokens): a TrainingSpec."""
    return await _json_body(request, "a JSON TrainingSpec")


async def _json_body(request: Request, what: str) -> Any:
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise ProblemError(f"expected an application/json body, got {media!r}", status=415,
                           slug="unsupported-media-type")
    raw = await request.body()
    check_no_nul(raw)
    check_json_depth(raw)
    if not raw.strip():
        raise SpecValidationError(f"the request body is empty; send {what}",
                                  errors=[{"loc": ["body"], "msg": "Field required",
                                           "type": "missing"}])
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        msg = str(exc)
        if isinstance(exc, json.JSONDecodeError):
            msg = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise SpecValidationError(msg, slug="invalid-json",
                                  errors=[{"loc": ["body"], "msg": msg, "type": "json_invalid"}]
                                  ) from None
