"""Both executors follow one recovery policy (app.recovery): kill -9 the process running a job
— a local pool worker or a Celery pool child — and the job goes back to the queue with its
history reset, runs again, and succeeds with every step stored exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer, make_settings
from test_integration import MEDIUM_SPEC, Cluster
from test_integration import cluster as cluster  # the Celery cluster fixture

from app.history import recorded_steps
from app.repositories import EventRepository, JobRepository

pytestmark = pytest.mark.timeout(300)

TERMINAL = {"succeeded", "failed", "cancelled"}


def assert_requeued_once_then_succeeded(job: dict[str, Any], status_events: list[dict[str, Any]],
                                        rows: int, distinct_steps: int) -> None:
    """The parity contract, the same for both executors."""
    assert job["status"] == "succeeded", job["error"]
    # (a loaded machine may lose a heartbeat of the second run too: at least one re-queue)
    requeued = [e for e in status_events if e.get("requeued")]
    assert requeued and all(e["reason"].startswith("worker lost:") for e in requeued)
    assert requeued[0]["status"] == "queued" and requeued[0]["attempts"] == 1
    assert job["attempts"] == len(requeued) + 1
    total = job["progress"]["total_steps"]
    assert rows == distinct_steps == total  # no duplicate rows, nothing lost


def test_a_local_worker_killed_mid_job_requeues_it_and_it_succeeds(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1, heartbeat_timeout_seconds=6,
                             reaper_interval_seconds=0.5)
    with LiveServer(settings) as server:
        job_id = server.http.post("/v1/jobs", json=MEDIUM_SPEC).json()["id"]
        deadline = time.monotonic() + 60
        while server.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.05)
        factory = server.app.state.sessionmaker
        with factory() as session:
            victim = JobRepository(session).get(job_id)
            assert victim is not None and victim.worker_id
        os.kill(int(victim.worker_id.rpartition(":")[2]), signal.SIGKILL)
        job = server.wait_for(job_id, TERMINAL, timeout=240)
        with factory() as session:
            steps = [r.step for r in recorded_steps(session, job_id)]
            rows, distinct = len(steps), len(set(steps))
            events = [e.data for e in EventRepository(session).of_type(job_id, "status")]
    assert_requeued_once_then_succeeded(job, events, rows, distinct)
    first_requeue = next(e for e in events if e["requeued"])
    assert "killed by SIGKILL" in first_requeue["reason"]


@pytest.mark.integration
def test_a_celery_worker_killed_mid_job_requeues_it_and_it_succeeds(cluster: Cluster
                                                                    ) -> None:
    cluster.ensure_workers(2)
    job_id = cluster.submit(MEDIUM_SPEC)
    cluster.wait_running(job_id)
    victim = cluster.worker_of(job_id)
    cluster.kill_group(victim, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    cluster.start_worker()
    job = cluster.wait_terminal(job_id, timeout=240)
    counts = cluster.history_counts(job_id)
    assert_requeued_once_then_succeeded(job, cluster.status_events(job_id), counts["rows"],
                                        counts["distinct_steps"])
