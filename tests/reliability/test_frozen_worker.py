"""The local executor applies the heartbeat timeout like the scale-out one (issue 13 item 6):
a worker process frozen mid-job (SIGSTOP) is killed once its heartbeat is older than
GRADWATCH_HEARTBEAT_TIMEOUT_SECONDS, and its job is re-queued and runs on a new worker —
not failed at the runtime limit plus grace (an hour by default)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from conftest import LONG_SPEC, LiveServer, make_settings

from app.repositories import EventRepository, JobRepository


def test_a_frozen_local_worker_is_killed_and_its_job_runs_again(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1, heartbeat_timeout_seconds=3,
                             reaper_interval_seconds=0.5)
    with LiveServer(settings) as server:
        job_id = server.http.post("/v1/jobs", json=LONG_SPEC).json()["id"]
        deadline = time.monotonic() + 60
        while server.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.05)
        factory = server.app.state.sessionmaker
        with factory() as session:
            job = JobRepository(session).get(job_id)
            assert job is not None and job.worker_id
            frozen = int(job.worker_id.rpartition(":")[2])
        os.kill(frozen, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 90
            while True:  # re-queued, then running on a new worker
                with factory() as session:
                    job = JobRepository(session).get(job_id)
                    assert job is not None
                if job.status == "running" and job.attempts == 2:
                    break
                assert time.monotonic() < deadline, (job.status, job.attempts, job.error)
                time.sleep(0.1)
            assert job.worker_id != f"{os.uname().nodename}:{frozen}"
        finally:
            with contextlib.suppress(ProcessLookupError):  # the executor did not: the test fails
                os.kill(frozen, signal.SIGKILL)
        with factory() as session:
            requeued = [e.data for e in EventRepository(session).of_type(job_id, "status")
                        if e.data["requeued"]]
        assert requeued and "no heartbeat" in requeued[0]["reason"]
        assert server.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        assert server.wait_for(job_id, {"cancelled"}, timeout=60)["status"] == "cancelled"
