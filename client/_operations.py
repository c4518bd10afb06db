"""Every API operation as a request to send and a parser for its answer.

The sync :class:`~client.Client` and the :class:`~client.AsyncClient` share these, so the
two never disagree about paths, parameters or types; they differ only in how they send.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from client.errors import ApiError
from client.models import (
    Comparison,
    Diagnosis,
    Event,
    GradientHistory,
    Job,
    JobPage,
    MetricsHistory,
    Preflight,
)

T = TypeVar("T")
StrList = list[str]  # `list` is also a method name in the classes below

__all__ = ["ARROW_STREAM", "EVERY_POINT", "Call", "SSEParser", "TablePage", "concat_tables", "ops",
           "plot_format"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: ``max_points`` that asks for every recorded point (a range never holds more steps)
EVERY_POINT = 2**31


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


def check(response: httpx.Response, ok: tuple[int, ...]) -> httpx.Response:
    if response.status_code not in ok:
        raise ApiError.from_response(response)
    return response


def _json(response: httpx.Response) -> Any:
    return response.json()


def _spec(spec: dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(spec, str | Path):
        loaded: dict[str, Any] = json.loads(Path(spec).read_text())
        return loaded
    return spec


def plot_format(path: str | Path | None, fmt: str | None) -> str:
    """``png`` or ``svg``: explicit, or from the file name's suffix."""
    if fmt is not None:
        return fmt
    if path is not None and str(path).lower().endswith(".svg"):
        return "svg"
    return "png"


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class TablePage:
    """One page of a history read as Arrow: a ``pyarrow.Table`` and the next page's cursor."""

    table: Any
    next_cursor: str | None


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:  # the client's only optional dependency
        raise ImportError("history tables need pyarrow: pip install pyarrow") from None
    return pyarrow


def _table_page(response: httpx.Response) -> TablePage:
    table = _pyarrow().ipc.open_stream(response.content).read_all()
    meta = json.loads((table.schema.metadata or {}).get(b"gradwatch", b"{}"))
    return TablePage(table, meta.get("next_cursor"))


def concat_tables(pages: list[TablePage]) -> Any:
    """The pages' tables as one ``pyarrow.Table`` (one chunk per page, no copy)."""
    return _pyarrow().concat_tables([p.table for p in pages])


class ops:  # a namespace of call builders
    """Builders of :class:`Call`; see the client methods for the parameters."""

    @staticmethod
    def submit(spec: dict[str, Any] | str | Path, idempotency_key: str | None) -> Call[Job]:
        # A key of our own makes the POST safe to resend after a dropped connection.
        key = idempotency_key or f"client-{uuid.uuid4()}"
        return Call("POST", "/v1/jobs", lambda r: Job.model_validate(r.json()), json=_spec(spec),
                    headers={"Idempotency-Key": key})

    @staticmethod
    def get(job_id: str) -> Call[Job]:
        return Call("GET", f"/v1/jobs/{job_id}", lambda r: Job.model_validate(r.json()))

    @staticmethod
    def list(*, status: StrList | str | None, verdict: StrList | str | None,
             parent_id: str | None, limit: int, cursor: str | None) -> Call[JobPage]:
        return Call("GET", "/v1/jobs", lambda r: JobPage.model_validate(r.json()),
                    params=_params(status=status, verdict=verdict, parent_id=parent_id,
                                   limit=limit, cursor=cursor))

    @staticmethod
    def cancel(job_id: str) -> Call[Job]:
        return Call("POST", f"/v1/jobs/{job_id}/cancel", lambda r: Job.model_validate(r.json()),
                    retry_safe=False)

    @staticmethod
    def delete(job_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/jobs/{job_id}", lambda r: None, ok=(204,), retry_safe=False)

    @staticmethod
    def repair(job_id: str, recommendation: int | None, spec_patch: dict[str, Any] | None,
               idempotency_key: str | None) -> Call[Job]:
        key = idempotency_key or f"client-{uuid.uuid4()}"
        return Call("POST", f"/v1/jobs/{job_id}/repair", lambda r: Job.model_validate(r.json()),
                    json=_params(recommendation=recommendation, spec_patch=spec_patch),
                    headers={"Idempotency-Key": key})

    @staticmethod
    def compare(job_id: str, other: str | None) -> Call[Comparison]:
        return Call("GET", f"/v1/jobs/{job_id}/comparison",
                    lambda r: Comparison.model_validate(r.json()), params=_params(other=other))

    @staticmethod
    def diagnostics(job_id: str) -> Call[Diagnosis]:
        return Call("GET", f"/v1/jobs/{job_id}/diagnostics",
                    lambda r: Diagnosis.model_validate(r.json()))

    @staticmethod
    def gradients(job_id: str, *, layer: int | None, start_step: int | None,
                  end_step: int | None, max_points: int, metrics: StrList | None,
                  cursor: str | None = None) -> Call[GradientHistory]:
        return Call("GET", f"/v1/jobs/{job_id}/gradients",
                    lambda r: GradientHistory.from_json(r.json()),
                    params=_params(layer=layer, start_step=start_step, end_step=end_step,
                                   max_points=max_points, metrics=metrics, cursor=cursor))

    @staticmethod
    def metrics(job_id: str, *, start_step: int | None, end_step: int | None, max_points: int,
                metrics: StrList | None, cursor: str | None = None) -> Call[MetricsHistory]:
        return Call("GET", f"/v1/jobs/{job_id}/metrics",
                    lambda r: MetricsHistory.from_json(r.json()),
                    params=_params(start_step=start_step, end_step=end_step,
                                   max_points=max_points, metrics=metrics, cursor=cursor))

    @staticmethod
    def table(job_id: str, kind: str, *, layer: int | None, start_step: int | None,
              end_step: int | None, max_points: int, metrics: StrList | None,
              cursor: str | None) -> Call[TablePage]:
        if kind not in ("gradients", "metrics"):
            raise ValueError(f"kind is {kind!r}: choose 'gradients' or 'metrics'")
        return Call("GET", f"/v1/jobs/{job_id}/{kind}", _table_page,
                    params=_params(layer=layer, start_step=start_step, end_step=end_step,
                                   max_points=max_points, metrics=metrics, cursor=cursor),
                    headers={"Accept": ARROW_STREAM})

    @staticmethod
    def plot(job_id: str, kind: str, fmt: str, other: str | None) -> Call[bytes]:
        return Call("GET", f"/v1/jobs/{job_id}/plots/{kind}", lambda r: r.content,
                    params=_params(format=fmt, other=other))

    @staticmethod
    def preflight(spec: dict[str, Any] | str | Path) -> Call[Preflight]:
        return Call("POST", "/v1/preflight", lambda r: Preflight.model_validate(r.json()),
                    json=_spec(spec))

    @staticmethod
    def datasets() -> Call[Any]:
        return Call("GET", "/v1/datasets", _json)


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
