"""Every API operation as a request to send and a parser for its answer, and everything
about sending it that does not depend on how it is sent.

The sync :class:`~client.Client` and the :class:`~client.AsyncClient` share these, so the
two never disagree about paths, parameters, types, retries, streamed bodies and downloads;
they differ only in how they send (``send`` vs ``await send``) and sleep.

A single request and its retry decision live in :mod:`client.calls`, following an event
stream in :mod:`client.event_stream`; this module holds the call builders (:class:`ops`) and
the multi-request plans, and re-exports them all.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
import numpy as np

from client.calls import Call, Retry, check, finish
from client.event_stream import EventStream, SSEParser
from client.models import (
    Comparison,
    Dataset,
    Diagnosis,
    GradientHistory,
    Job,
    JobPage,
    MetricsHistory,
    Prediction,
    Preflight,
    StabilityMap,
    Sweep,
    SweepPage,
    SweepSummary,
)
from client.specs import finite, spec_body
from client.transport import UPLOAD_TYPES, Download, FileBody

T = TypeVar("T")
StrList = list[str]  # `list` is also a method name in the classes below

__all__ = ["ARROW_STREAM", "EVERY_POINT", "Call", "EventStream", "Plan", "Retry", "SSEParser",
           "TablePage", "check", "concat_tables", "finish", "ops", "plot_format", "written"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: ``max_points`` that asks for every recorded point (a range never holds more steps)
EVERY_POINT = 2**31


#: a multi-request operation: yields calls (is sent each one's answer) and waits (seconds to
#: sleep, sent None), returns the result; the clients run plans with their own send and sleep
Plan = Generator["Call[Any] | float", Any, T]


def wait_plan(job_id: str, timeout: float | None, poll: float) -> Plan[Job]:
    """The job once it is terminal; TimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job: Job = yield ops.get(job_id)
        if job.terminal:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
        yield poll


def wait_sweep_plan(sweep_id: str, timeout: float | None, poll: float) -> Plan[Sweep]:
    """The sweep once every member is terminal; TimeoutError after ``timeout`` seconds.
    Polls the sweep without its members (``members=false``), then gets it whole once."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sweep: SweepSummary = yield ops.sweep_summary(sweep_id)
        if sweep.terminal:
            full: Sweep = yield ops.sweep(sweep_id)
            return full
        if deadline is not None and time.monotonic() > deadline:
            p = sweep.progress
            done = f"{p.members_done}/{p.members} members done" if p else "no progress"
            raise TimeoutError(f"sweep {sweep_id} is still {sweep.status} after {timeout} s "
                               f"({done})")
        yield poll


def written(call: Call[bytes], path: str | Path | None) -> Plan[bytes]:
    """The answer's bytes, also written to ``path`` when given."""
    data: bytes = yield call
    if path is not None:
        Path(path).write_bytes(data)
    return data


def plot_plan(job_id: str, kind: str, path: str | Path | None, fmt: str | None,
              other: str | None) -> Plan[bytes]:
    """A plot's bytes, also written to ``path`` when given (SVG when it ends in .svg)."""
    return written(ops.plot(job_id, kind, plot_format(path, fmt), other), path)


def table_plan(first: Callable[[str | None], Call[TablePage]]) -> Plan[Any]:
    """Every page of an Arrow history, followed by cursor, as one table."""
    pages: list[TablePage] = []
    cursor: str | None = None
    while True:
        page: TablePage = yield first(cursor)
        pages.append(page)
        if page.next_cursor is None:
            return concat_tables(pages)
        cursor = page.next_cursor


def _json(response: httpx.Response) -> Any:
    return response.json()


def plot_format(path: str | Path | None, fmt: str | None) -> str:
    """``png`` or ``svg``: explicit, or from the file name's suffix (PNG for a name without
    one); a ValueError for another suffix (``g.jpg`` would get PNG bytes under a name that
    says JPEG), before anything is sent."""
    if fmt is not None:
        return fmt
    suffix = Path(path).suffix.lower() if path is not None else ""
    if suffix not in ("", ".png", ".svg"):
        raise ValueError(f"{path}: the server draws PNG or SVG only; name the file .png or "
                         ".svg, or pass format='png' / 'svg'")
    return "svg" if suffix == ".svg" else "png"


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _at_params(at: dict[str, Any] | None) -> dict[str, str]:
    """``at.<path>=<value>`` query parameters (the server reads an int, a float, else a
    string)."""
    return {f"at.{path}": str(value) for path, value in (at or {}).items()}


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
        return Call("POST", "/v1/jobs", lambda r: Job.model_validate(r.json()),
                    json=spec_body(spec), headers={"Idempotency-Key": key})

    @staticmethod
    def get(job_id: str) -> Call[Job]:
        return Call("GET", f"/v1/jobs/{job_id}", lambda r: Job.model_validate(r.json()))

    @staticmethod
    def list(*, status: StrList | str | None, verdict: StrList | str | None,
             parent_id: str | None, limit: int, cursor: str | None,
             sweep_members: bool | None = None) -> Call[JobPage]:
        return Call("GET", "/v1/jobs", lambda r: JobPage.model_validate(r.json()),
                    params=_params(status=status, verdict=verdict, parent_id=parent_id,
                                   limit=limit, cursor=cursor, sweep_members=sweep_members))

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
                    json=_params(recommendation=recommendation, spec_patch=finite(spec_patch)),
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
                    json=spec_body(spec))

    @staticmethod
    def datasets() -> Call[Any]:
        return Call("GET", "/v1/datasets", _json)

    @staticmethod
    def upload_dataset(source: str | PathLike[str] | BinaryIO, *, name: str, task: str,
                       target: str | None, format: str | None) -> Call[Dataset]:
        body = FileBody(source)
        fmt = format or Path(body.name).suffix.lower().lstrip(".")
        if fmt not in UPLOAD_TYPES:
            raise ValueError(f"cannot tell the format of {body.name or 'the file'!r}: pass "
                             f"format={' or '.join(map(repr, UPLOAD_TYPES))}")
        # not resent once it may have reached the server: a second upload is a second set
        return Call("POST", "/v1/datasets", lambda r: Dataset.model_validate(r.json()),
                    params=_params(name=name, task=task, target=target),
                    headers={"Content-Type": UPLOAD_TYPES[fmt]}, upload=body, retry_safe=False)

    @staticmethod
    def dataset(dataset_id: str) -> Call[Dataset]:
        return Call("GET", f"/v1/datasets/{dataset_id}",
                    lambda r: Dataset.model_validate(r.json()))

    @staticmethod
    def delete_dataset(dataset_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/datasets/{dataset_id}", lambda r: None, ok=(204,),
                    retry_safe=False)

    @staticmethod
    def download_model(job_id: str, path: str | PathLike[str], *, which: str,
                       allow_non_finite: bool) -> Call[Path]:
        sink = Download(path)
        return Call("GET", f"/v1/jobs/{job_id}/model", lambda r: sink.path,
                    params={"which": which, "allow_non_finite": str(allow_non_finite).lower()},
                    download=sink)

    @staticmethod
    def predict(job_id: str, X: Any, *, which: str, allow_non_finite: bool
                ) -> Call[Prediction]:
        try:
            rows = np.asarray(X, dtype=np.float64)
        except ValueError as exc:  # ragged rows, or cells that are not numbers
            raise ValueError(f"X must be rows of numbers, all of one length ({exc})") from None
        if rows.ndim != 2 or not rows.size:
            raise ValueError("X has no rows" if not rows.size else
                             f"X must be 2-D (rows, columns); got shape {rows.shape}")
        if not np.isfinite(rows).all():  # JSON cannot carry them, the model takes none
            i, j = np.argwhere(~np.isfinite(rows))[0]
            raise ValueError(f"X row {i}, column {j} (counted from 0) is {rows[i, j]}: the "
                             "model takes finite numbers only")
        # the model answers the same rows the same way: safe to resend
        return Call("POST", f"/v1/jobs/{job_id}/predict",
                    lambda r: Prediction.model_validate(r.json()), json={"X": rows.tolist()},
                    params={"which": which, "allow_non_finite": str(allow_non_finite).lower()})

    @staticmethod
    def export(job_id: str, kind: str, path: str | PathLike[str], fmt: str) -> Call[Path]:
        if kind not in EXPORT_KINDS:
            raise ValueError(f"kind is {kind!r}: choose 'gradients' or 'metrics'")
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"format is {fmt!r}: choose 'csv' or 'parquet'")
        sink = Download(path)
        return Call("GET", f"/v1/jobs/{job_id}/{kind}.{fmt}", lambda r: sink.path,
                    download=sink)

    # ---------------------------------------------------------------- sweeps
    @staticmethod
    def submit_sweep(spec: dict[str, Any] | str | Path, axes: Sequence[dict[str, Any]],
                     name: str | None, idempotency_key: str | None) -> Call[Sweep]:
        # The 202 carries the whole sweep (members included): no need to follow Location.
        # A key of our own makes the POST safe to resend (the server answers the sweep the
        # first attempt created, as for jobs).
        key = idempotency_key or f"client-{uuid.uuid4()}"
        return Call("POST", "/v1/sweeps", lambda r: Sweep.model_validate(r.json()),
                    json=_params(name=name, spec=spec_body(spec),
                                 axes=finite([dict(a) for a in axes], "axes.")),
                    headers={"Idempotency-Key": key})

    @staticmethod
    def list_sweeps(*, status: StrList | str | None, tenant: str | None, limit: int,
                    cursor: str | None) -> Call[SweepPage]:
        return Call("GET", "/v1/sweeps", lambda r: SweepPage.model_validate(r.json()),
                    params=_params(status=status, tenant=tenant, limit=limit, cursor=cursor))

    @staticmethod
    def launch_sweep(sweep_id: str, *, member: int | str, spec_patch: dict[str, Any] | None,
                     x: str | None, y: str | None, at: dict[str, Any] | None,
                     name: str | None, idempotency_key: str | None) -> Call[Job]:
        key = idempotency_key or f"client-{uuid.uuid4()}"
        return Call("POST", f"/v1/sweeps/{sweep_id}/launch",
                    lambda r: Job.model_validate(r.json()),
                    json=_params(member=member, spec_patch=finite(spec_patch), x=x, y=y, at=at,
                                 name=name),
                    headers={"Idempotency-Key": key})

    @staticmethod
    def sweep(sweep_id: str) -> Call[Sweep]:
        return Call("GET", f"/v1/sweeps/{sweep_id}", lambda r: Sweep.model_validate(r.json()))

    @staticmethod
    def sweep_summary(sweep_id: str) -> Call[SweepSummary]:
        return Call("GET", f"/v1/sweeps/{sweep_id}",
                    lambda r: SweepSummary.model_validate(r.json()), params={"members": "false"})

    @staticmethod
    def cancel_sweep(sweep_id: str) -> Call[Sweep]:
        return Call("POST", f"/v1/sweeps/{sweep_id}/cancel",
                    lambda r: Sweep.model_validate(r.json()), retry_safe=False)

    @staticmethod
    def delete_sweep(sweep_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/sweeps/{sweep_id}", lambda r: None, ok=(204,),
                    retry_safe=False)

    @staticmethod
    def stability(sweep_id: str, x: str | None, y: str | None, at: dict[str, Any] | None
                  ) -> Call[StabilityMap]:
        return Call("GET", f"/v1/sweeps/{sweep_id}/stability",
                    lambda r: StabilityMap.model_validate(r.json()),
                    params={**_params(x=x, y=y), **_at_params(at)})

    @staticmethod
    def plot_stability(sweep_id: str, fmt: str, x: str | None, y: str | None,
                       at: dict[str, Any] | None) -> Call[bytes]:
        return Call("GET", f"/v1/sweeps/{sweep_id}/plots/stability", lambda r: r.content,
                    params={**_params(x=x, y=y, format=fmt), **_at_params(at)})


EXPORT_KINDS: Sequence[str] = ("gradients", "metrics")
EXPORT_FORMATS: Sequence[str] = ("csv", "parquet")
