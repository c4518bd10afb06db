"""Creating or cancelling a sweep costs a fixed number of SQL statements, however many
members it has.

A 1,024-member sweep used to insert, announce and mark sent each member in statements (and
transactions) of its own: ~5,000 round trips, 17 s for the POST on SQLite with two workers
busy. The members' rows, their first events and the executor's acknowledgement now go in
one statement each (per 500 ids); cancelling moves the queued members and flags the running
ones likewise (it took ~10 statements a member: 10,248 for 1,024, 11 s with workers busy).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import SWEEP_SPEC, counting_statements
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import unit_of_work
from app.lifecycle import move_job
from app.models import Job, JobEvent, utcnow


def statements_to_create(client: TestClient, points: int) -> tuple[int, dict[str, Any]]:
    """The statements the engine ran for one POST /v1/sweeps of ``2 * points`` members (the
    commit's after-commit send included), and the created sweep."""
    with counting_statements(client) as ran:
        r = client.post("/v1/sweeps", json={
            "spec": SWEEP_SPEC,
            "axes": [{"path": "model.init.std", "values": [0.3, 2.0]},
                     {"path": "optimizer.lr", "log_range": [1e-3, 1.0], "points": points}]})
    assert r.status_code == 202, r.text
    return len(ran), r.json()


@pytest.mark.parametrize("points", [32, 300])  # 64 members; 600 (two batches of ids)
def test_a_sweep_is_created_in_as_many_statements_as_a_four_member_one(
        make_client: Any, points: int) -> None:
    client = make_client()  # no workers: members stay queued
    small, _ = statements_to_create(client, 2)
    large, sweep = statements_to_create(client, points)
    assert large <= small + (2 if points > 250 else 0), (small, large)

    members = [m["job_id"] for m in sweep["members"]]
    assert len(members) == 2 * points
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with factory() as session:
        jobs = session.scalars(select(Job).where(Job.parent_sweep_id == sweep["id"])).all()
        assert sorted(j.id for j in jobs) == sorted(members)
        assert all(j.status == "queued" and j.enqueued_at is not None and j.event_seq == 1
                   for j in jobs)
    # three members running (as a worker's claim moves them): flagged, the others cancelled
    running = members[:3]
    with unit_of_work(factory) as session:
        for job_id in running:
            move_job(session, job_id, "running", started_at=utcnow(), worker_id="test:1",
                     attempts=Job.attempts + 1)
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    with factory() as session:
        jobs = session.scalars(select(Job).where(Job.parent_sweep_id == sweep["id"])).all()
        assert {j.id for j in jobs if j.status == "running" and j.cancel_requested} == \
            set(running)
        assert all(j.status == "cancelled" and j.stop_reason == "cancelled" and j.finished_at
                   for j in jobs if j.id not in running)
        events = {job_id: [(e.seq, e.data["status"], e.data["cancel_requested"],
                            e.data["reason"]) for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))]
            for job_id in (members[0], members[-1])}
    assert events[members[-1]] == [(1, "queued", False, None), (2, "cancelled", False, None)]
    assert events[members[0]] == [(1, "queued", False, None), (2, "running", False, None),
                                  (3, "running", True, "cancel requested")]


@pytest.mark.parametrize("points", [32, 300])
def test_a_sweep_is_cancelled_in_as_many_statements_as_a_four_member_one(
        make_client: Any, points: int) -> None:
    client = make_client()
    counts = []
    for n in (2, points):
        _, sweep = statements_to_create(client, n)
        with counting_statements(client) as ran:
            r = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
        assert r.status_code == 202, r.text
        counts.append(len(ran))
    assert counts[1] <= counts[0] + (6 if points > 250 else 0), counts
