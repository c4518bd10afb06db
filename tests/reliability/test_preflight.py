"""Preflight's probe pass costs the API process bounded memory (issue 13 item 2): it runs
only for specs estimated under GRADWATCH_PREFLIGHT_PROBE_MAX_BYTES, two at a time; bigger
ones get the analytic report, and the server stays within its memory cap."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SMALL = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
         "model": {"hidden": [{"units": 16}]}}
# about 300 MiB by preflight's own estimate: a batch of 8,192 through 2 x 1,024 units
BIG = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 10_000},
       "model": {"hidden": [{"units": 1024}] * 2},
       "training": {"epochs": 1, "batch_size": 8_192, "validation_split": 0.0}}


def test_big_specs_are_analysed_without_the_probe_and_small_ones_with_it(
        capped_server: Callable[..., Any]) -> None:
    server = capped_server(GRADWATCH_PREFLIGHT_PROBE_MAX_BYTES=64 * 2**20,
                           GRADWATCH_MAX_JOB_MEMORY_BYTES=16 * 2**30)
    small = server.http.post("/v1/preflight", json=SMALL).json()
    baseline = server.peak_rss()
    assert small["measured_amplification"] is not None
    with ThreadPoolExecutor(3) as pool:  # three at once used to take 8 GB
        reports = list(pool.map(lambda _: server.http.post("/v1/preflight", json=BIG), range(3)))
    for r in reports:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["memory_bytes"] > 256 * 2**20 and body["measured_amplification"] is None
    assert server.alive()
    # the API process never came near one spec's size (probing one took > 300 MiB)
    assert server.peak_rss() < baseline + 128 * 2**20, (baseline, server.peak_rss())
