"""The asynchronous client: ``AsyncClient(base_url, api_key=None)``, the same methods as
:class:`client.Client`, awaitable (``follow`` is an async iterator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx

from client._operations import (
    EVERY_POINT,
    Call,
    EventStream,
    Plan,
    Retry,
    SSEParser,
    finish,
    ops,
    plot_format,
    plot_plan,
    table_plan,
    wait_plan,
    wait_sweep_plan,
    written,
)
from client.models import (
    Comparison,
    Dataset,
    Diagnosis,
    Event,
    GradientHistory,
    Job,
    JobPage,
    MetricsHistory,
    Prediction,
    Preflight,
    StabilityMap,
    Sweep,
    SweepPage,
)
from client.transport import RETRYABLE_ERRORS, Backoff, auth_headers

T = TypeVar("T")
StrList = list[str]  # `list` is also a method name in the classes below

__all__ = ["AsyncClient"]


class AsyncClient:
    """A gradwatch server. Retries connection errors and 503s with exponential backoff.

    >>> async with AsyncClient("http://127.0.0.1:8000") as gw:
    ...     job = await gw.wait((await gw.submit(spec)).id)
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float = 30.0, retries: int = 5, backoff: float = 0.25,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._backoff = Backoff(retries, backoff)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=auth_headers(api_key),
                                       timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _call(self, call: Call[T]) -> T:
        for attempt in self._backoff.attempts():
            try:
                response = await self._http.send(call.request(self._http, sync=False),
                                                 stream=True)
                try:
                    if (sink := call.sink(response)) is not None:
                        with sink.open() as f:
                            async for chunk in response.aiter_bytes():
                                f.write(chunk)
                    else:
                        await response.aread()
                finally:
                    await response.aclose()
            except RETRYABLE_ERRORS as exc:
                await asyncio.sleep(call.after_error(attempt, exc))
                continue
            result = finish(call, response, attempt)
            if isinstance(result, Retry):
                await asyncio.sleep(result)
                continue
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, plan: Plan[T]) -> T:
        """Run a multi-request operation: send its calls, sleep its waits."""
        try:
            step = next(plan)
            while True:
                if isinstance(step, Call):
                    step = plan.send(await self._call(step))
                else:
                    await asyncio.sleep(step)
                    step = plan.send(None)
        except StopIteration as done:
            result: T = done.value
            return result

    # ------------------------------------------------------------------ jobs
    async def submit(self, spec: dict[str, Any] | str | Path, idempotency_key: str | None = None
               ) -> Job:
        """Submit a spec (a dict, or the path of a JSON file); the queued job."""
        return await self._call(ops.submit(spec, idempotency_key))

    async def get(self, job_id: str) -> Job:
        return await self._call(ops.get(job_id))

    async def list(self, *, status: StrList | str | None = None,
             verdict: StrList | str | None = None, parent_id: str | None = None,
             limit: int = 50, cursor: str | None = None,
             sweep_members: bool | None = None) -> JobPage:
        """One page of jobs, newest first (``page.next_cursor`` for the next);
        ``sweep_members=False`` leaves out the members of sweeps."""
        return await self._call(ops.list(status=status, verdict=verdict, parent_id=parent_id,
                                   limit=limit, cursor=cursor, sweep_members=sweep_members))

    async def cancel(self, job_id: str) -> Job:
        return await self._call(ops.cancel(job_id))

    async def delete(self, job_id: str) -> None:
        await self._call(ops.delete(job_id))

    async def repair(self, job_id: str, recommendation: int | None = None,
               spec_patch: dict[str, Any] | None = None, idempotency_key: str | None = None
               ) -> Job:
        """Run a recommended fix (default: the first) or your own merge patch as a child job."""
        return await self._call(ops.repair(job_id, recommendation, spec_patch, idempotency_key))

    async def compare(self, job_id: str, other: str | None = None) -> Comparison:
        return await self._call(ops.compare(job_id, other))

    async def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.25) -> Job:
        """The job once it is terminal; TimeoutError after ``timeout`` seconds."""
        return await self._run(wait_plan(job_id, timeout, poll))

    def follow(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The job's server-sent events until its terminal event; reconnects after a dropped
        connection with ``Last-Event-ID``, so no event is lost or repeated."""
        return self._events(EventStream(job_id, last_event_id, self._backoff))

    async def _events(self, stream: EventStream) -> AsyncIterator[Event]:
        while True:
            try:
                async with self._http.stream("GET", stream.path, headers=stream.headers(),
                                             timeout=stream.timeout(self._http)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        stream.refuse(response)
                    parser = SSEParser()
                    async for line in response.aiter_lines():
                        event = stream.feed(parser, line)
                        if event is not None:
                            yield event
                            if event.terminal:
                                return
            except RETRYABLE_ERRORS:
                pass
            await asyncio.sleep(stream.dropped())

    # ------------------------------------------------------------------ sweeps
    async def submit_sweep(self, spec: dict[str, Any] | str | Path,
                           axes: Sequence[dict[str, Any]], name: str | None = None,
                           idempotency_key: str | None = None) -> Sweep:
        """Sweep a spec (a dict, or the path of a JSON file) over ``axes``, each
        ``{"path": "optimizer.lr", "values": [...]}`` or ``{"path": ..., "log_range": [lo,
        hi], "points": n}``; the queued sweep with one member job per grid point. Sent with
        an Idempotency-Key (``idempotency_key``, or one of its own), so a resend after a
        dropped connection answers the sweep the first attempt created."""
        return await self._call(ops.submit_sweep(spec, axes, name, idempotency_key))

    async def list_sweeps(self, *, limit: int = 50, cursor: str | None = None,
                          status: StrList | str | None = None, tenant: str | None = None
                          ) -> SweepPage:
        """One page of sweeps, newest first (``page.next_cursor`` for the next): each with
        its status, progress and members' verdict counts, no members (``sweep(id)``).
        ``status`` filters on the derived status; ``tenant``: the admin's view of one."""
        return await self._call(ops.list_sweeps(status=status, tenant=tenant, limit=limit,
                                                cursor=cursor))

    async def launch_sweep(self, sweep_id: str, member: int | str = "recommended",
                           spec_patch: dict[str, Any] | None = None, x: str | None = None,
                           y: str | None = None, at: dict[str, Any] | None = None,
                           name: str | None = None, idempotency_key: str | None = None
                           ) -> Job:
        """Launch the real run like a member: a new job (not a member) with the member's
        spec — ``"recommended"`` (the stability grid's over ``x``/``y``/``at``; 409 when
        there is none) or a member index — and ``spec_patch`` (RFC 7396 merge patch) merged
        in. ``job.launched_from`` says where it came from. Safe to resend (Idempotency-Key)."""
        return await self._call(ops.launch_sweep(
            sweep_id, member=member, spec_patch=spec_patch, x=x, y=y, at=at, name=name,
            idempotency_key=idempotency_key))

    async def sweep(self, sweep_id: str) -> Sweep:
        """The sweep: status, progress and every member's values, status and verdict."""
        return await self._call(ops.sweep(sweep_id))

    async def wait_sweep(self, sweep_id: str, timeout: float | None = None, poll: float = 0.5
                         ) -> Sweep:
        """The sweep once every member is terminal; TimeoutError after ``timeout`` seconds.
        Polls every ``poll`` seconds without the members; gets the whole sweep once."""
        return await self._run(wait_sweep_plan(sweep_id, timeout, poll))

    def follow_sweep(self, sweep_id: str, last_event_id: int | None = None
                     ) -> AsyncIterator[Event]:
        """The sweep's server-sent events (``snapshot``, ``progress``: status, members done,
        verdict counts; a terminal ``status``); resumes as :meth:`follow` does."""
        return self._events(EventStream(sweep_id, last_event_id, self._backoff, kind="sweep"))

    async def cancel_sweep(self, sweep_id: str) -> Sweep:
        """Cancel the unfinished members (409 when every member has finished)."""
        return await self._call(ops.cancel_sweep(sweep_id))

    async def delete_sweep(self, sweep_id: str) -> None:
        """Delete a finished sweep and its member jobs (409 while a member is unfinished)."""
        await self._call(ops.delete_sweep(sweep_id))

    async def stability(self, sweep_id: str, x: str | None = None, y: str | None = None,
                        at: dict[str, Any] | None = None) -> StabilityMap:
        """The verdicts over axes ``x`` (default: the last axis) and ``y`` (default: the
        first), the boundary per row and preflight's calibration; other axes held at their
        first value or at ``at`` (path -> value). 409 until a member has finished."""
        return await self._call(ops.stability(sweep_id, x, y, at))

    async def plot_stability(self, sweep_id: str, path: str | Path | None = None, *,
                             format: str | None = None, x: str | None = None,
                             y: str | None = None, at: dict[str, Any] | None = None) -> bytes:
        """The stability map as PNG (or SVG: ``format="svg"`` or a path ending in .svg);
        written to ``path`` when given. Axes as :meth:`stability`."""
        return await self._run(written(ops.plot_stability(
            sweep_id, plot_format(path, format), x, y, at), path))

    # ------------------------------------------------------------------ histories
    async def diagnostics(self, job_id: str) -> Diagnosis:
        return await self._call(ops.diagnostics(job_id))

    async def gradients(self, job_id: str, *, layer: int | None = None,
                        start_step: int | None = None, end_step: int | None = None,
                        max_points: int = 1000, metrics: StrList | None = None,
                        cursor: str | None = None) -> GradientHistory:
        """Per-layer series as NumPy arrays (NaN/±Inf restored); a full-resolution read past
        the server's budget is paged: pass ``history.next_cursor`` as ``cursor``."""
        return await self._call(ops.gradients(job_id, layer=layer, start_step=start_step,
                                        end_step=end_step, max_points=max_points,
                                        metrics=metrics, cursor=cursor))

    async def metrics(self, job_id: str, *, start_step: int | None = None,
                end_step: int | None = None, max_points: int = 1000,
                metrics: StrList | None = None, cursor: str | None = None) -> MetricsHistory:
        """Loss, global gradient norm, lr (and epoch figures) as NumPy arrays; paged as
        :meth:`gradients`."""
        return await self._call(ops.metrics(job_id, start_step=start_step, end_step=end_step,
                                      max_points=max_points, metrics=metrics, cursor=cursor))

    async def table(self, job_id: str, kind: str = "metrics", *, layer: int | None = None,
              start_step: int | None = None, end_step: int | None = None,
              max_points: int = EVERY_POINT, metrics: StrList | None = None) -> Any:
        """A history (``kind`` ``metrics`` or ``gradients``) as one ``pyarrow.Table``, read as
        Arrow IPC and every page followed: a ``step`` column and one float64 column per
        series (``loss``, ``layers.0.grad_norm``, ...; null: no value at that step), NaN/±Inf
        and -0.0 exactly as stored. Every point by default; a smaller ``max_points``
        downsamples as the JSON reads do. Needs pyarrow; ``.to_pandas()`` for a DataFrame."""
        return await self._run(table_plan(lambda cursor: ops.table(
            job_id, kind, layer=layer, start_step=start_step, end_step=end_step,
            max_points=max_points, metrics=metrics, cursor=cursor)))

    async def plot(self, job_id: str, kind: str = "gradients", path: str | Path | None = None, *,
             format: str | None = None, other: str | None = None) -> bytes:
        """A plot (``gradients``, ``heatmap``, ``loss``, ``comparison``); written to ``path``
        when given (SVG when it ends in .svg)."""
        return await self._run(plot_plan(job_id, kind, path, format, other))

    # ------------------------------------------------------------------ specs
    async def preflight(self, spec: dict[str, Any] | str | Path) -> Preflight:
        return await self._call(ops.preflight(spec))

    async def datasets(self) -> Any:
        return await self._call(ops.datasets())

    # ------------------------------------------------------------------ data sets
    async def upload_dataset(self, path_or_file: str | PathLike[str] | BinaryIO, *, name: str,
                       task: str, target: str | None = None, format: str | None = None
                       ) -> Dataset:
        """Upload a CSV (header row; ``target`` names the target column, default the last) or
        an .npz (arrays ``X``, ``y``), streamed from the file, never read whole; ``task`` is
        ``classification`` or ``regression``; ``format`` (``csv``/``npz``) defaults to the
        file name's suffix. Use it in a spec as ``"data": dataset.spec_data``."""
        return await self._call(ops.upload_dataset(path_or_file, name=name, task=task,
                                             target=target, format=format))

    async def dataset(self, dataset_id: str) -> Dataset:
        return await self._call(ops.dataset(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded data set (409 while a queued or running job trains on it)."""
        await self._call(ops.delete_dataset(dataset_id))

    # ------------------------------------------------------------------ models and exports
    async def download_model(self, job_id: str, path: str | PathLike[str], *, which: str = "final",
                       allow_non_finite: bool = False) -> Path:
        """Stream the job's trained model (``which``: ``final`` or ``best``) to ``path`` (an
        .npz; ``core.load_model(path)`` reads it offline); ``path`` is only written once the
        whole file arrived. An exploded run's model is a 409 unless ``allow_non_finite``."""
        return await self._call(ops.download_model(job_id, path, which=which,
                                             allow_non_finite=allow_non_finite))

    async def predict(self, job_id: str, X: Any, *, which: str = "final",
                allow_non_finite: bool = False) -> Prediction:
        """The job's model's predictions for the rows of ``X`` (2-D, raw inputs)."""
        return await self._call(ops.predict(job_id, X, which=which,
                                      allow_non_finite=allow_non_finite))

    async def export_csv(self, job_id: str, kind: str, path: str | PathLike[str]) -> Path:
        """Stream every recorded point of a history (``gradients`` or ``metrics``) as CSV to
        ``path`` (NaN/Inf as ``nan``/``inf``/``-inf``)."""
        return await self._call(ops.export(job_id, kind, path, "csv"))

    async def export_parquet(self, job_id: str, kind: str, path: str | PathLike[str]) -> Path:
        """As :meth:`export_csv`, as Parquet (the same columns; NaN/Inf kept)."""
        return await self._call(ops.export(job_id, kind, path, "parquet"))
