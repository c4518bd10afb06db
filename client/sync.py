"""The synchronous client: ``Client(base_url, api_key=None)``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from client._operations import (
    EVERY_POINT,
    Call,
    SSEParser,
    TablePage,
    check,
    concat_tables,
    ops,
    plot_format,
)
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
from client.transport import NOT_SENT, RETRYABLE_ERRORS, Backoff, auth_headers

T = TypeVar("T")
StrList = list[str]  # `list` is also a method name in the classes below

__all__ = ["Client"]


class Client:
    """A gradwatch server. Retries connection errors and 503s with exponential backoff.

    >>> gw = Client("http://127.0.0.1:8000")
    >>> job = gw.wait(gw.submit({"data": {"source": "synthetic", "name": "spirals"}}).id)
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float = 30.0, retries: int = 5, backoff: float = 0.25,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._backoff = Backoff(retries, backoff)
        self._http = httpx.Client(base_url=self.base_url, headers=auth_headers(api_key),
                                  timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, call: Call[T]) -> T:
        for attempt in self._backoff.attempts():
            try:
                response = self._http.request(call.method, call.path, params=call.params,
                                              json=call.json, headers=call.headers)
            except RETRYABLE_ERRORS as exc:
                if attempt.last or not (call.retry_safe or isinstance(exc, NOT_SENT)):
                    raise
                time.sleep(attempt.delay())
                continue
            if response.status_code == 503 and not attempt.last:
                time.sleep(attempt.delay(response.headers.get("Retry-After")))
                continue
            return call.parse(check(response, call.ok))
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ jobs
    def submit(self, spec: dict[str, Any] | str | Path, idempotency_key: str | None = None
               ) -> Job:
        """Submit a spec (a dict, or the path of a JSON file); the queued job."""
        return self._call(ops.submit(spec, idempotency_key))

    def get(self, job_id: str) -> Job:
        return self._call(ops.get(job_id))

    def list(self, *, status: StrList | str | None = None,
             verdict: StrList | str | None = None, parent_id: str | None = None,
             limit: int = 50, cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first (``page.next_cursor`` for the next)."""
        return self._call(ops.list(status=status, verdict=verdict, parent_id=parent_id,
                                   limit=limit, cursor=cursor))

    def cancel(self, job_id: str) -> Job:
        return self._call(ops.cancel(job_id))

    def delete(self, job_id: str) -> None:
        self._call(ops.delete(job_id))

    def repair(self, job_id: str, recommendation: int | None = None,
               spec_patch: dict[str, Any] | None = None, idempotency_key: str | None = None
               ) -> Job:
        """Run a recommended fix (default: the first) or your own merge patch as a child job."""
        return self._call(ops.repair(job_id, recommendation, spec_patch, idempotency_key))

    def compare(self, job_id: str, other: str | None = None) -> Comparison:
        return self._call(ops.compare(job_id, other))

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.25) -> Job:
        """The job once it is terminal; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.terminal:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            time.sleep(poll)

    def follow(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's server-sent events until its terminal event; reconnects after a dropped
        connection with ``Last-Event-ID``, so no event is lost or repeated."""
        last = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                       timeout=httpx.Timeout(self._http.timeout.connect,
                                                             read=60.0)) as response:
                    if response.status_code != 200:
                        response.read()
                        if response.status_code != 503:
                            raise ApiError.from_response(response)
                        raise httpx.RemoteProtocolError("503")
                    parser = SSEParser()
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        failures = 0
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.terminal:
                            return
            except RETRYABLE_ERRORS:
                pass
            failures += 1  # dropped, or ended without a terminal event: resume
            if failures > self._backoff.retries:
                raise ConnectionError(f"lost the event stream of job {job_id} "
                                      f"{failures} times in a row")
            time.sleep(self._backoff.delay(failures))

    # ------------------------------------------------------------------ histories
    def diagnostics(self, job_id: str) -> Diagnosis:
        return self._call(ops.diagnostics(job_id))

    def gradients(self, job_id: str, *, layer: int | None = None, start_step: int | None = None,
                  end_step: int | None = None, max_points: int = 1000,
                  metrics: StrList | None = None, cursor: str | None = None
                  ) -> GradientHistory:
        """Per-layer series as NumPy arrays (NaN/±Inf restored); a full-resolution read past
        the server's budget is paged: pass ``history.next_cursor`` as ``cursor``."""
        return self._call(ops.gradients(job_id, layer=layer, start_step=start_step,
                                        end_step=end_step, max_points=max_points,
                                        metrics=metrics, cursor=cursor))

    def metrics(self, job_id: str, *, start_step: int | None = None,
                end_step: int | None = None, max_points: int = 1000,
                metrics: StrList | None = None, cursor: str | None = None) -> MetricsHistory:
        """Loss, global gradient norm, lr (and epoch figures) as NumPy arrays; paged as
        :meth:`gradients`."""
        return self._call(ops.metrics(job_id, start_step=start_step, end_step=end_step,
                                      max_points=max_points, metrics=metrics, cursor=cursor))

    def table(self, job_id: str, kind: str = "metrics", *, layer: int | None = None,
              start_step: int | None = None, end_step: int | None = None,
              max_points: int = EVERY_POINT, metrics: StrList | None = None) -> Any:
        """A history (``kind`` ``metrics`` or ``gradients``) as one ``pyarrow.Table``, read as
        Arrow IPC and every page followed: a ``step`` column and one float64 column per
        series (``loss``, ``layers.0.grad_norm``, ...; null: no value at that step), NaN/±Inf
        and -0.0 exactly as stored. Every point by default; a smaller ``max_points``
        downsamples as the JSON reads do. Needs pyarrow; ``.to_pandas()`` for a DataFrame."""
        pages: list[TablePage] = []
        cursor: str | None = None
        while True:
            page = self._call(ops.table(job_id, kind, layer=layer, start_step=start_step,
                                        end_step=end_step, max_points=max_points,
                                        metrics=metrics, cursor=cursor))
            pages.append(page)
            if page.next_cursor is None:
                return concat_tables(pages)
            cursor = page.next_cursor

    def plot(self, job_id: str, kind: str = "gradients", path: str | Path | None = None, *,
             format: str | None = None, other: str | None = None) -> bytes:
        """A plot (``gradients``, ``heatmap``, ``loss``, ``comparison``); written to ``path``
        when given (SVG when it ends in .svg)."""
        fmt = plot_format(path, format)
        data = self._call(ops.plot(job_id, kind, fmt, other))
        if path is not None:
            Path(path).write_bytes(data)
        return data

    # ------------------------------------------------------------------ specs
    def preflight(self, spec: dict[str, Any] | str | Path) -> Preflight:
        return self._call(ops.preflight(spec))

    def datasets(self) -> Any:
        return self._call(ops.datasets())
