"""A large history read costs the server bounded memory and blocks nobody (issue 13 item 5):
every point of a 200,000-step job (4.8M values of gradient statistics, ~55 MB as one JSON
body) is served in pages of GRADWATCH_MAX_HISTORY_VALUES points, each encoded piece by piece,
as JSON and as Arrow; the API process's peak memory rises by about a page, a fraction of the
body's size, and /healthz answers throughout. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from reliability_backends import backend_env
from reliability_backends import database_url as database_url  # the fixture
from test_history_budget import SPEC, record

from app.db import build_engine, build_sessionmaker, unit_of_work
from app.history_formats import ARROW_STREAM
from app.lifecycle import move_job
from app.sink import DatabaseSink
from client import AsyncClient, Client

N_STEPS = 200_000
PAGE_VALUES = 240_000  # 24 series x 10,000 steps: 20 pages
MIB = 1024**2


def fill(server: Any, database_url: str | None, n_steps: int = N_STEPS) -> str:
    """A job of ``server`` holding ``n_steps`` recorded steps, written as its worker would."""
    job_id: str = server.http.post("/v1/jobs", json=SPEC).json()["id"]
    url = database_url or f"sqlite:///{server.env['GRADWATCH_DATA_DIR']}/gradwatch.db"
    engine = build_engine(url)
    try:
        factory = build_sessionmaker(engine)
        with unit_of_work(factory) as session:
            move_job(session, job_id, "running")
        sink = DatabaseSink(job_id, factory, total_steps=n_steps, flush_every=10**6)
        for start in range(0, n_steps, 50_000):
            sink.write_steps([record(s) for s in range(start, min(n_steps, start + 50_000))])
        sink.close()
    finally:
        engine.dispose()
    return job_id


def read_all(http: httpx.Client, url: str, headers: dict[str, str]) -> tuple[int, int, int]:
    """(pages, body bytes in all, largest page) following the Link headers, streamed."""
    n_pages = total = largest = 0
    target: str | None = url
    while target is not None:
        size = 0
        with http.stream("GET", target, headers=headers) as r:
            assert r.status_code == 200, r.read()
            for block in r.iter_bytes():
                size += len(block)
            link = r.headers.get("link")
        n_pages += 1
        total += size
        largest = max(largest, size)
        target = re.fullmatch(r'<([^>]+)>; rel="next"', link).group(1) if link else None
    return n_pages, total, largest


def test_every_point_of_a_long_run_is_served_in_bounded_memory(
        capped_server: Callable[..., Any], database_url: str | None) -> None:
    server = capped_server(GRADWATCH_MAX_HISTORY_VALUES=PAGE_VALUES, **backend_env(database_url))
    job_id = fill(server, database_url)
    url = f"/v1/jobs/{job_id}/gradients?max_points={N_STEPS}"
    # warm up (imports, pools, the first page's code paths) before taking the baseline
    small = server.http.get(f"/v1/jobs/{job_id}/gradients",
                            params={"max_points": 100_000, "end_step": 999})
    assert small.status_code == 200 and len(small.json()["layers"]) == 3
    arrow = server.http.get(f"/v1/jobs/{job_id}/metrics", params={"end_step": 999,
                                                                  "format": "arrow"})
    assert pa.ipc.open_stream(arrow.content).read_all().num_rows == 1000
    baseline = server.peak_rss()

    healthy: list[int] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not done.is_set():
                healthy.append(http.get("/healthz").status_code)
                done.wait(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        pages, total, largest = read_all(server.http, url, {})
        arrow_pages, arrow_total, _ = read_all(server.http, url, {"Accept": ARROW_STREAM})
    finally:
        done.set()
        prober.join()
    assert pages == arrow_pages == 20
    assert total > 50 * MIB and arrow_total < total
    growth = server.peak_rss() - baseline
    print(f"JSON {total / MIB:.1f} MiB in {pages} pages (largest {largest / MIB:.1f} MiB), "
          f"Arrow {arrow_total / MIB:.1f} MiB; API peak memory +{growth / MIB:.1f} MiB")
    # the body is never built whole: the peak grows by a page's worth, not by the read's
    assert growth < min(total / 2, 48 * MIB), (growth / MIB, total / MIB, largest / MIB)
    assert healthy and set(healthy) == {200}
    assert server.alive()


def test_the_client_reads_every_page_into_one_arrow_table(
        capped_server: Callable[..., Any]) -> None:
    server = capped_server(GRADWATCH_MAX_HISTORY_VALUES=100_000)
    job_id = fill(server, None, n_steps=30_000)
    with Client(server.url) as gw:
        table = gw.table(job_id, "gradients", layer=2, metrics=["grad_norm", "act_mean"])
        assert table.column_names == ["step", "layers.2.grad_norm", "layers.2.act_mean"]
        assert table.num_rows == 30_000 and table.column("layers.2.act_mean").null_count == 30_000
        assert len(table.column("step").chunks) == 1  # 60,000 values: one page
        first = gw.gradients(job_id, max_points=30_000)  # 24 series: paged
        assert first.next_cursor is not None and len(first.layers[0]["grad_norm"].steps) == 4166
    want = np.array([record(s).grad_norm for s in range(30_000)])

    async def read_metrics() -> Any:
        async with AsyncClient(server.url) as agw:
            return await agw.table(job_id)  # metrics, every point: 2 pages of 25,000 steps

    metrics = asyncio.run(read_metrics())
    assert len(metrics.column("step").chunks) == 2
    assert metrics.column("step").to_pylist() == list(range(30_000))
    got = metrics.column("grad_norm").to_numpy()
    assert got.tobytes() == want.tobytes()  # bit-exact, the Infinity at step 7 included
