"""One exception for every error answer of the API (RFC 9457 problem+json)."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, Field

__all__ = ["ApiError", "FieldError"]


class FieldError(BaseModel):
    """One invalid field of a 422: where (``loc``, e.g. ``["body", "optimizer", "lr"]``) and why."""

    loc: list[str | int] = Field(default_factory=list)
    msg: str = ""
    type: str = ""

    @property
    def path(self) -> str:
        """The field path as ``body.optimizer.lr``."""
        return ".".join(str(p) for p in self.loc)


class ApiError(Exception):
    """The server answered with an error: its status, title, detail and field errors."""

    def __init__(self, status: int, title: str, detail: str = "", *, type: str = "about:blank",
                 errors: list[FieldError] | None = None, body: Any = None) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        self.body = body
        fields = "; ".join(f"{e.path}: {e.msg}" for e in self.errors)
        super().__init__(f"{status} {title}: {detail}" + (f" ({fields})" if fields else ""))

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Parse a problem+json (or any other) error response."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return cls(response.status_code, response.reason_phrase or "error",
                       response.text[:500], body=body)
        errors = [FieldError.model_validate(e) for e in body.get("errors") or []
                  if isinstance(e, dict)]
        return cls(int(body.get("status") or response.status_code),
                   str(body.get("title") or response.reason_phrase),
                   str(body.get("detail") or ""), type=str(body.get("type") or "about:blank"),
                   errors=errors, body=body)
