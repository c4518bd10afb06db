"""Finishing runs: :func:`app.run_end.finish_runs` finishes several runs in one transaction,
each kept or dropped on its own (a run whose job went to another worker keeps nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import SMALL_SPEC
from sqlalchemy import select, update

from app.db import unit_of_work
from app.lifecycle import move_job
from app.models import DiagnosticReportRow, Job, JobEvent
from app.repositories import Claim
from app.run_end import Finish, finish_runs
from app.services import submit_job, validate_spec
from app.settings import Settings


def _running(factory: Any, settings: Settings, worker: str) -> tuple[str, Claim]:
    with unit_of_work(factory) as session:
        job_id = submit_job(session, spec=validate_spec(SMALL_SPEC, settings),
                            settings=settings).job.id
        job = move_job(session, job_id, "running", worker_id=worker,
                       attempts=Job.attempts + 1)
        assert job is not None
        return job_id, Claim(worker, job.attempts)


def _finish(job_id: str, claim: Claim, marker: list[str]) -> Finish:
    def also(session: Any) -> None:  # written with the run's results, kept only with them
        session.execute(update(Job).where(Job.id == job_id).values(name=f"also-{job_id}"))
        marker.append(job_id)

    return Finish(job_id, claim, "succeeded", "completed", None,
                  {"verdict": "healthy", "summary": "ok"}, None, 64, 1.5, also)


def test_finish_runs_keeps_each_run_on_its_own(session_factory: Any, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, workers=0)
    a, claim_a = _running(session_factory, settings, "w:1")
    b, claim_b = _running(session_factory, settings, "w:1")
    c, claim_c = _running(session_factory, settings, "w:1")
    with unit_of_work(session_factory) as session:  # b was given to another worker meanwhile
        session.execute(update(Job).where(Job.id == b).values(worker_id="w:2"))
    called: list[str] = []
    moved = finish_runs(session_factory,
                        [_finish(a, claim_a, called), _finish(b, claim_b, called),
                         _finish(c, claim_c, called)])
    assert moved == [True, False, True]
    assert called == [a, b, c]
    with session_factory() as session:
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_([a, b, c])))}
        reports = set(session.scalars(select(DiagnosticReportRow.job_id)))
        terminal_events = {e.job_id for e in session.scalars(
            select(JobEvent).where(JobEvent.type == "status")) if e.data["terminal"]}
    for job_id in (a, c):
        job = jobs[job_id]
        assert (job.status, job.verdict, job.steps_completed) == ("succeeded", "healthy", 64)
        assert job.runtime_seconds == 1.5 and job.name == f"also-{job_id}"
    assert jobs[b].status == "running" and jobs[b].verdict is None
    assert jobs[b].name != f"also-{b}"  # its `also` was rolled back with it
    assert reports == {a, c}
    assert terminal_events == {a, c}
