"""A sweep's stack stays within the job memory budget.

Every member is checked against ``max_job_memory_bytes`` when the sweep is submitted, but a
worker trains a group of members as one stack, holding all of them at once. A group as large
as the members per worker (up to 256) used to be claimed whatever its size in memory: 16
members that each trained fine alone failed together with ``MemoryError`` under the worker's
memory limit. The group is now cut to what fits (``core.stack_data.members_that_fit``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer, make_settings

from core import TrainingSpec
from core.diagnostics import preflight
from core.stack_data import members_that_fit
from core.stack_recording import kept_row_bytes

pytestmark = pytest.mark.timeout(240)

MiB = 2**20
WIDE: dict[str, Any] = {  # ~36 MiB by preflight's estimate, 3 MiB of it data
    "data": {"source": "synthetic", "name": "blobs", "n_samples": 512, "n_features": 784,
             "n_classes": 10},
    "model": {"hidden": [{"units": 512}, {"units": 512}]},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "training": {"epochs": 1, "batch_size": 128},
}


def test_members_that_fit_count_each_data_set_once_and_every_kept_history() -> None:
    spec = TrainingSpec.model_validate(WIDE)
    report = preflight(spec, probe=False)
    history = spec.total_steps() * kept_row_bytes(3)  # 3 layers
    total, data = report.memory_bytes + history, report.memory_breakdown["data"]
    same_data = [spec] * 10
    assert members_that_fit(same_data, total) == 1
    assert members_that_fit(same_data, 2 * total - data) == 2  # the data set once
    assert members_that_fit(same_data, 2 * total - data - 1) == 1
    assert members_that_fit(same_data, 100 * total) == 10
    seeds = [spec.model_copy(update={"seed": s}) for s in range(10)]  # a data set each
    assert members_that_fit(seeds, 2 * total - data) == 1
    assert members_that_fit(seeds, 2 * total) == 2
    assert members_that_fit(same_data, 1) == 1  # the first always: it fit the budget alone

    # a long run's kept history counts, up to the rows a worker keeps
    long = TrainingSpec.model_validate({**WIDE, "training": {
        "epochs": 20_000, "batch_size": 128, "max_steps": 60_000}})
    per_member = report.memory_bytes - data
    rows = 60_000 * kept_row_bytes(3)
    assert members_that_fit([long] * 10, data + 3 * (per_member + rows)) == 3
    kept = 1_000 * kept_row_bytes(3)
    assert members_that_fit([long] * 10, data + 3 * (per_member + rows), 1_000) == min(
        10, (3 * (per_member + rows)) // (per_member + kept))


def test_a_sweep_whose_stack_would_exceed_the_memory_budget_trains_in_smaller_stacks(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1, max_job_memory_bytes=100 * MiB,
                             worker_memory_headroom_bytes=400 * MiB)
    assert preflight(TrainingSpec.model_validate(WIDE), probe=False).memory_bytes < 100 * MiB
    with LiveServer(settings) as live:
        r = live.http.post("/v1/sweeps", json={
            "spec": WIDE, "axes": [{"path": "optimizer.lr", "log_range": [1e-4, 1e-2],
                                    "points": 16}]})
        assert r.status_code == 202, r.text
        sweep = live.wait_sweep(r.json()["id"], timeout=200)
    outcome = Counter((m["status"], m["stop_reason"]) for m in sweep["members"])
    assert outcome == {("succeeded", "completed"): 16}, sweep["members"][0]
