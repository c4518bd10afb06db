"""A memory budget per job (issue 13 item 3): a spec whose preflight estimate exceeds
GRADWATCH_MAX_JOB_MEMORY_BYTES is a 422 naming the estimate and the limit, before anything is
allocated (job submission and preflight alike); worker processes run under RLIMIT_DATA, so
an estimate that is wrong fails the job with MemoryError instead of exhausting the machine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from reliability_backends import backend_env
from reliability_backends import database_url as database_url  # the fixture

GIB = 1024**3

# batch 65,536 through twenty alternating 8,192- and 1-unit layers: ~8 GiB of activations
# within every individual limit
HUGE_ACTIVATIONS: dict[str, Any] = {
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 70_000},
    "model": {"hidden": [{"units": 8192 if i % 2 == 0 else 1} for i in range(20)]},
    "training": {"epochs": 1, "batch_size": 65_536, "validation_split": 0.0},
}


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/preflight"])
def test_a_spec_over_the_memory_budget_is_422_naming_estimate_and_limit(
        capped_server: Callable[..., Any], path: str, database_url: str | None) -> None:
    server = capped_server(GRADWATCH_MAX_JOB_MEMORY_BYTES=GIB, **backend_env(database_url))
    newest = server.http.get("/v1/jobs", params={"limit": 1}).json()["items"]
    r = server.http.post(path, json=HUGE_ACTIVATIONS)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["type"].endswith("limit-exceeded")
    assert problem["limit"] == GIB and problem["value"] > 4 * GIB
    assert "GRADWATCH_MAX_JOB_MEMORY_BYTES" in problem["detail"]
    assert server.alive()
    assert server.http.get("/v1/jobs", params={"limit": 1}).json()["items"] == newest  # none stored


def test_a_worker_process_cannot_allocate_past_its_budget() -> None:
    code = """
import numpy as np
from app.settings import Settings
from app.worker_process import limit_memory
limit = limit_memory(Settings(max_job_memory_bytes=64 * 2**20,
                              worker_memory_headroom_bytes=512 * 2**20))
assert limit == 576 * 2**20, limit
small = np.ones(2**20)  # 8 MiB: fine
try:
    np.ones(2**28)  # 2 GiB
except MemoryError:
    print("MemoryError")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "MemoryError"
