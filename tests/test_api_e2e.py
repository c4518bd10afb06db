"""End to end: a real server, real worker processes, a temp SQLite database migrated by Alembic.

No mocks: jobs really train in a worker process and their norms come back over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LONG_SPEC, SMALL_SPEC, LiveServer, make_settings

from app.db import build_engine, build_sessionmaker, unit_of_work
from app.lifecycle import move_job
from app.migrate import upgrade
from app.models import utcnow
from app.repositories import JobRepository
from app.routers.examples import EXPLODING_SPEC

TERMINAL = {"succeeded", "failed", "cancelled"}

pytestmark = pytest.mark.timeout(180)


def read_events(live: LiveServer, job_id: str, timeout: float = 60, **headers: str) -> list[dict[str, Any]]:
    """Read the SSE stream until the server ends it (bounded by ``timeout``)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with live.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                          timeout=httpx.Timeout(timeout)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError("the event stream did not end")
            if not line:
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.strip()
    return events


def worker_pid(live: LiveServer, job_id: str) -> int:
    with live.app.state.sessionmaker() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None and job.worker_id
        return int(job.worker_id.rpartition(":")[2])


def test_a_job_trains_in_a_worker_process_and_its_norms_come_back_over_http(live: LiveServer) -> None:
    r = live.http.post("/v1/jobs", json=SMALL_SPEC)
    assert r.status_code == 202
    job_id = r.json()["id"]
    events = read_events(live, job_id)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "snapshot"
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    # a first connection replays the history: the status events of a job that ran already
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    job = live.http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["stop_reason"] == "completed"
    assert job["verdict"] is not None
    total = job["progress"]["total_steps"]
    assert job["progress"]["step"] == total
    assert worker_pid(live, job_id) != os.getpid()  # trained in a worker process

    grads = live.http.get(f"/v1/jobs/{job_id}/gradients").json()
    assert [layer["layer"] for layer in grads["layers"]] == [0, 1, 2]
    norms = grads["layers"][0]["series"]["grad_norm"]
    assert norms["steps"] == list(range(total)) and all(v > 0 for v in norms["values"])
    metrics = live.http.get(f"/v1/jobs/{job_id}/metrics").json()
    assert len(metrics["series"]["grad_norm"]["values"]) == total
    assert len(metrics["epochs"]["epoch"]) == 2
    report = live.http.get(f"/v1/jobs/{job_id}/diagnostics").json()
    assert report["final"] is True and report["verdict"] == job["verdict"]

    # a subscriber that lost its connection resumes after the last id it saw
    resumed = read_events(live, job_id, **{"Last-Event-ID": events[1]["id"]})
    assert [e["id"] for e in resumed] == [e["id"] for e in events[2:]]


def test_an_exploding_spec_is_diagnosed_and_its_repair_compares_better(live: LiveServer) -> None:
    job_id = live.http.post("/v1/jobs", json=EXPLODING_SPEC).json()["id"]
    job = live.wait_for(job_id, TERMINAL)
    assert job["status"] == "succeeded", job["error"]
    assert job["verdict"] == "exploding"
    report = live.http.get(f"/v1/jobs/{job_id}/diagnostics").json()
    assert report["recommendations"] and report["recommendations"][0]["spec_patch"]
    r = live.http.post(f"/v1/jobs/{job_id}/repair", json={})
    assert r.status_code == 202
    child = r.json()
    assert child["parent_id"] == job_id and child["repair"]["recommendation"] == 0
    live.wait_for(child["id"], TERMINAL)
    comparison = live.http.get(f"/v1/jobs/{child['id']}/comparison").json()
    assert comparison["original"]["job_id"] == job_id
    assert comparison["repair"]["job_id"] == child["id"]
    assert comparison["original"]["verdict"] == "exploding"
    assert comparison["repair"]["verdict"] not in ("exploding", None)  # the fix works
    assert comparison["spec_patch"] == report["recommendations"][0]["spec_patch"]
    listed = live.http.get("/v1/jobs", params={"parent_id": job_id}).json()["items"]
    assert [j["id"] for j in listed] == [child["id"]]


def test_cancel_stops_a_running_job_within_one_flush(live: LiveServer) -> None:
    job_id = live.http.post("/v1/jobs", json=LONG_SPEC).json()["id"]
    deadline = time.monotonic() + 30
    while live.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] == 0:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    r = live.http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    job = live.wait_for(job_id, TERMINAL, timeout=15)
    assert job["status"] == "cancelled" and job["stop_reason"] == "cancelled"
    assert 0 < job["progress"]["step"] < job["progress"]["total_steps"]
    assert live.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    # what it recorded before stopping stays readable, then deleting frees everything
    assert live.http.get(f"/v1/jobs/{job_id}/gradients", params={"max_points": 50}).json()["layers"]
    assert live.http.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert live.http.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_job_whose_worker_keeps_dying_fails_only_itself_and_the_server_keeps_serving(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1, max_attempts=1)
    with LiveServer(settings) as server:
        job_id = server.http.post("/v1/jobs", json=LONG_SPEC).json()["id"]
        server.wait_for(job_id, {"running"})
        os.kill(worker_pid(server, job_id), signal.SIGKILL)  # what the OOM killer does
        job = server.wait_for(job_id, TERMINAL, timeout=30)
        assert job["status"] == "failed"
        assert "died" in job["error"] and "SIGKILL" in job["error"]
        assert "GRADWATCH_MAX_ATTEMPTS=1" in job["error"]
        assert server.http.get("/healthz").status_code == 200
        nxt = server.http.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
        assert server.wait_for(nxt, TERMINAL, timeout=60)["status"] == "succeeded"


def test_restart_resubmits_queued_jobs_and_requeues_orphaned_running_ones(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1)
    upgrade(settings.url)
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    spec = {**SMALL_SPEC}
    from app.services import submit_job, validate_spec

    with unit_of_work(factory) as session:
        queued = submit_job(session, spec=validate_spec(spec, settings), settings=settings).job.id
        orphan = submit_job(session, spec=validate_spec(spec, settings), settings=settings).job.id
    with unit_of_work(factory) as session:  # as if a previous server died mid-run
        move_job(session, orphan, "running", started_at=utcnow(), heartbeat_at=utcnow(),
                 attempts=1, worker_id=f"{os.uname().nodename}:999999999")
    engine.dispose()
    with LiveServer(settings) as server:
        assert server.wait_for(orphan, TERMINAL, timeout=60)["status"] == "succeeded"
        assert server.wait_for(queued, TERMINAL, timeout=60)["status"] == "succeeded"
        events = read_events(server, orphan)
    requeued = [e["data"] for e in events if e["event"] == "status" and e["data"]["requeued"]]
    assert len(requeued) == 1 and "gone" in requeued[0]["reason"]


def test_a_job_over_its_runtime_limit_fails_with_a_readable_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1, max_job_runtime_seconds=1.0)
    with LiveServer(settings) as server:
        job_id = server.http.post("/v1/jobs", json=LONG_SPEC).json()["id"]
        job = server.wait_for(job_id, TERMINAL, timeout=60)
    assert job["status"] == "failed" and job["stop_reason"] == "max_runtime"
    assert "maximum runtime" in job["error"]


@pytest.mark.parametrize("attempt", range(1))
def test_the_database_is_never_locked_under_concurrent_jobs_and_reads(live: LiveServer, attempt: int) -> None:
    ids = [live.http.post("/v1/jobs", json={**SMALL_SPEC, "seed": i}).json()["id"]
           for i in range(4)]
    for job_id in ids:
        while live.http.get(f"/v1/jobs/{job_id}").json()["status"] not in TERMINAL:
            assert live.http.get(f"/v1/jobs/{job_id}/gradients").status_code == 200
            time.sleep(0.01)
    assert all(live.http.get(f"/v1/jobs/{i}").json()["status"] == "succeeded" for i in ids)


