"""The Python client end to end against a real server with real workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.showcase import DIVERGING_SPEC
from client import ApiError, AsyncClient, Client, GradientHistory, MetricsHistory
from tests.conftest import LONG_SPEC, SMALL_SPEC, LiveServer

# A few seconds of steps with a progress event every 0.2 s: a stream worth cutting.
MEDIUM_SPEC: dict[str, Any] = {**LONG_SPEC, "name": "medium",
                               "training": {**LONG_SPEC["training"], "epochs": 80}}


def test_the_client_imports_nothing_from_the_server() -> None:
    code = ("import sys, client, client.cli; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'app', 'core', 'sqlalchemy', 'celery', 'fastapi', 'starlette', 'alembic', "
            "'matplotlib', 'redis'}); print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parent.parent)
    assert result.stdout.strip() == ""


def test_submit_follow_and_read_a_diverging_run(gw: Client, tmp_path: Path) -> None:
    job = gw.submit(DIVERGING_SPEC)
    assert job.status in ("queued", "running") and job.spec is not None
    events = list(gw.follow(job.id))
    assert events[-1].terminal and events[-1].data["status"] == "succeeded"
    finished = gw.wait(job.id, timeout=60)
    assert finished.verdict == "exploding" and finished.first_non_finite is not None

    history = gw.gradients(job.id)
    g0 = history.layers[0]["grad_norm"]
    assert g0.values.dtype == np.float64 and g0.steps.shape == g0.values.shape
    assert np.isinf(g0.values).any() or np.isnan(g0.values).any()
    step = finished.first_non_finite["step"]
    assert step in set(g0.steps.tolist())
    metrics = gw.metrics(job.id, metrics=["loss", "grad_norm"])
    assert not np.isfinite(metrics.series["grad_norm"].values).all()

    diag = gw.diagnostics(job.id)
    assert diag.verdict == "exploding" and diag.recommendations
    repaired = gw.wait(gw.repair(job.id).id, timeout=60)
    assert repaired.parent_id == job.id
    comparison = gw.compare(job.id)
    assert comparison.repair.job_id == repaired.id and comparison.original.verdict == "exploding"

    png = gw.plot(job.id, "gradients", tmp_path / "g.png")
    assert png[:4] == b"\x89PNG" and (tmp_path / "g.png").read_bytes() == png
    assert gw.plot(job.id, "heatmap", tmp_path / "h.svg")[:5] in (b"<?xml", b"<svg ")
    assert job.id in {j.id for j in gw.list(verdict="exploding", limit=200).items}
    assert gw.preflight(DIVERGING_SPEC).model_dump()["risk"]


def test_cancel_and_delete(gw: Client) -> None:
    job = gw.submit(LONG_SPEC)
    assert gw.cancel(job.id).cancel_requested or gw.get(job.id).status == "cancelled"
    assert gw.wait(job.id, timeout=60).status == "cancelled"
    gw.delete(job.id)
    with pytest.raises(ApiError) as info:
        gw.get(job.id)
    assert info.value.status == 404


def test_problem_json_is_one_exception_with_field_errors(gw: Client) -> None:
    with pytest.raises(ApiError) as info:
        gw.submit({"data": {"source": "synthetic", "name": "spirals"},
                   "optimizer": {"name": "sgd", "lr": -1.0}})
    error = info.value
    assert error.status == 422 and error.title
    assert any(e.path.endswith("optimizer.sgd.lr") or e.path.endswith("optimizer.lr")
               for e in error.errors), [e.path for e in error.errors]


def test_submit_with_the_same_idempotency_key_returns_the_same_job(gw: Client) -> None:
    key = f"test-{time.time_ns()}"
    assert gw.submit(SMALL_SPEC, idempotency_key=key).id == \
        gw.submit(SMALL_SPEC, idempotency_key=key).id


class CuttingProxy:
    """A TCP proxy to the live server that drops every connection after ``limit`` bytes of
    response: a real dropped connection, mid-stream."""

    def __init__(self, upstream: str, limit: int, port: int = 0) -> None:
        host, _, p = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(p))
        self.limit = limit
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(down, up, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, self.limit), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while limit is None or sent < limit:
                data = src.recv(min(4096, limit - sent) if limit else 4096)
                if not data:
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def test_follow_resumes_across_dropped_connections_without_losing_events(
        live: LiveServer, gw: Client) -> None:
    job = gw.submit(MEDIUM_SPEC)
    proxy = CuttingProxy(live.url, limit=2000)
    try:
        with Client(proxy.url, retries=10, backoff=0.05) as cut:
            events = list(cut.follow(job.id))
    finally:
        proxy.close()
    assert proxy.connections >= 2, "the stream was never cut"
    assert events[-1].terminal
    ids = [e.id for e in events if e.event != "snapshot"]
    assert ids == sorted(set(ids)), "events repeated or out of order"
    first = events[0].id if events[0].event == "snapshot" else 0
    replay = [e.id for e in gw.follow(job.id, last_event_id=first)]
    assert ids == replay  # every event after the snapshot arrived exactly once


def test_requests_are_retried_until_the_server_is_reachable(live: LiveServer) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proxies: list[CuttingProxy] = []
    timer = threading.Timer(0.8, lambda: proxies.append(
        CuttingProxy(live.url, limit=10**9, port=port)))
    timer.start()
    try:
        with Client(f"http://127.0.0.1:{port}", retries=8, backoff=0.1) as late:
            page = late.list(limit=1)
        assert isinstance(page.items, list)
    finally:
        timer.join()
        for p in proxies:
            p.close()


def test_async_client(live: LiveServer) -> None:
    async def scenario() -> tuple[str, list[str], np.ndarray]:
        async with AsyncClient(live.url) as agw:
            job = await agw.submit(SMALL_SPEC)
            kinds = [e.event async for e in agw.follow(job.id)]
            done = await agw.wait(job.id, timeout=60)
            history = await agw.gradients(job.id, layer=0)
            return done.status, kinds, history.layers[0]["grad_norm"].values

    status, kinds, values = asyncio.run(scenario())
    assert status == "succeeded" and kinds[-1] == "status"
    assert values.size > 0 and np.isfinite(values).all()


def test_api_key_for_the_client_and_the_cli(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    key = "client-test-key"
    with LiveServer(make_settings(tmp_path, workers=0, api_key=key)) as server:
        with Client(server.url, api_key=key) as keyed:
            job = keyed.submit(SMALL_SPEC)
            assert keyed.get(job.id).status == "queued"
        with Client(server.url, retries=0) as anonymous, pytest.raises(ApiError) as info:
            anonymous.list()
        assert info.value.status == 401 and info.value.title
        gradwatch = str(Path(sys.executable).parent / "gradwatch")
        env = {**os.environ, "GRADWATCH_URL": server.url}
        env.pop("GRADWATCH_API_KEY", None)
        denied = subprocess.run([gradwatch, "jobs"], env=env, capture_output=True, text=True)
        assert denied.returncode == 1 and "401" in denied.stderr
        by_env = subprocess.run([gradwatch, "jobs", "--json"], capture_output=True, text=True,
                                env={**env, "GRADWATCH_API_KEY": key})
        assert by_env.returncode == 0 and job.id in by_env.stdout
        by_flag = subprocess.run([gradwatch, "jobs", "--json", "--api-key", key], env=env,
                                 capture_output=True, text=True)
        assert by_flag.returncode == 0 and job.id in by_flag.stdout


def test_histories_repr_their_shape_not_their_numbers(gw: Client) -> None:
    """`repr()` of a MetricsHistory printed the raw body: every point of every series."""
    job = gw.submit({**SMALL_SPEC, "training": {"epochs": 40, "batch_size": 8}})
    gw.wait(job.id, timeout=120)
    metrics = gw.metrics(job.id)
    assert isinstance(metrics, MetricsHistory)
    points = len(metrics.series["loss"].steps)
    assert points >= 400
    text = repr(metrics)
    assert len(text) < 300, text
    assert job.id in text and "'loss'" in text and f"points={points}" in text
    assert "downsampled=False" in text and "epochs=40" in text
    gradients = gw.gradients(job.id)
    assert isinstance(gradients, GradientHistory)
    text = repr(gradients)
    assert len(text) < 300 and job.id in text and "layers=[0, 1, 2]" in text, text
    assert "'grad_norm'" in text and f"points={points}" in text
    series = repr(metrics.series["loss"])
    assert series == f"SeriesArrays({points} points, steps 0..{points - 1})"
    assert np.isfinite(metrics.series["loss"].values).all()
    coarse = gw.metrics(job.id, max_points=50)
    assert coarse.downsampled and "downsampled=True" in repr(coarse)
    assert f"points={len(coarse.series['loss'].steps)}," in repr(coarse)


def test_a_plot_file_name_other_than_png_or_svg_is_refused_before_sending(
        gw: Client, tmp_path: Path) -> None:
    """``gw.plot(job, path="g.jpg")`` wrote PNG bytes into a file named JPEG."""
    job = "00000000-0000-0000-0000-000000000000"  # refused before the request: no 404
    for call in (lambda: gw.plot(job, path=tmp_path / "g.jpg"),
                 lambda: gw.plot_stability(job, path=tmp_path / "map.jpeg")):
        with pytest.raises(ValueError, match="PNG or SVG only"):
            call()
    assert not list(tmp_path.iterdir())
    with pytest.raises(ApiError) as missing:  # a .svg name (any case) goes to the server
        gw.plot(job, path=tmp_path / "g.SVG")
    assert missing.value.status == 404
