"""A job re-queued and run again keeps its earlier run's events; its alerts say which run saw
them, and its diagnosis reads the alerts of the run it diagnoses only.

Followed across a server restart, a job showed the same "alert step 663" twice (the first
run's, then the second's), and the diagnosis of the second run merged the first run's alerts
with its own.
"""

from __future__ import annotations

from typing import Any

from conftest import SMALL_SPEC
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import unit_of_work
from app.history_records import stored_history
from app.lifecycle import move_job
from app.models import Job, JobEvent, utcnow
from app.recovery import requeue
from app.repositories import Claim
from app.sink import DatabaseSink


def run_once(factory: Any, job_id: str, alert_step: int) -> int:
    """Start ``job_id`` as a worker would and let its monitor raise one alert; the attempt."""
    with unit_of_work(factory) as session:
        job = move_job(session, job_id, "running", started_at=utcnow(), heartbeat_at=utcnow(),
                       worker_id="test:1", attempts=Job.attempts + 1)
        assert job is not None
        attempt = job.attempts
    sink = DatabaseSink(job_id, factory, total_steps=10, claim=Claim("test:1", attempt))
    sink.write_alert({"kind": "gradient_explosion", "severity": "warning",
                      "step": alert_step, "message": f"seen at step {alert_step}"})
    return attempt


def test_a_rerun_jobs_alerts_carry_their_run_and_its_diagnosis_reads_its_own(
        make_client: Any) -> None:
    client: TestClient = make_client()
    job_id = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    assert run_once(factory, job_id, 663) == 1
    with unit_of_work(factory) as session:  # the worker was lost: back to the queue
        assert requeue(session, job_id, where=[], reason="worker lost")
    assert run_once(factory, job_id, 700) == 2
    with factory() as session:
        alerts = [(e.data["step"], e.data["attempt"]) for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "alert")
            .order_by(JobEvent.seq))]
        job = session.get(Job, job_id)
        assert job is not None
        history = stored_history(session, job, client.app.state.settings)  # type: ignore[attr-defined]
    assert alerts == [(663, 1), (700, 2)]  # the log keeps both runs
    assert [a["step"] for a in history.alerts] == [700]  # the diagnosis: this run's only
