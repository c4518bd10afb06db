"""A provisional diagnosis is computed once per job and point of progress (issue 13 item 4):
N concurrent readers of a running job's /diagnostics cost one computation, off the event
loop; new records make the next reader compute afresh."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conftest import SMALL_SPEC
from fastapi.testclient import TestClient

from app.db import unit_of_work
from app.diagnosis_cache import PROVISIONAL
from app.lifecycle import move_job
from app.sink import DatabaseSink
from core.telemetry import LayerRecord, StepRecord


def record(step: int) -> StepRecord:
    return StepRecord(step=step, epoch=0, loss=1.0 / (step + 1), grad_norm=1.0,
                      clipped_grad_norm=1.0, lr=0.01, clipped=False,
                      layers=[LayerRecord(layer=0, grad_norm=1.0, weight_grad_norm=1.0,
                                          weight_norm=1.0, update_norm=0.01)])


def test_concurrent_readers_of_a_running_job_share_one_computation(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    job_id = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    factory: Any = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with unit_of_work(factory) as session:
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, factory, total_steps=10_000, flush_every=100_000)
    sink.write_steps([record(s) for s in range(2000)])
    sink.flush()

    before = PROVISIONAL.computed
    with ThreadPoolExecutor(8) as pool:
        reports = list(pool.map(lambda _: client.get(f"/v1/jobs/{job_id}/diagnostics"),
                                range(8)))
    assert all(r.status_code == 200 and r.json()["final"] is False for r in reports)
    assert len({r.text for r in reports}) == 1
    assert PROVISIONAL.computed == before + 1

    sink.write_steps([record(s) for s in range(2000, 2100)])
    sink.flush()  # the job moved on: the next reader gets a fresh diagnosis
    assert client.get(f"/v1/jobs/{job_id}/diagnostics").status_code == 200
    assert PROVISIONAL.computed == before + 2
    assert client.get("/healthz").status_code == 200
