"""Creating a sweep costs a fixed number of SQL statements, however many members it has.

A 1,024-member sweep used to insert, announce and mark sent each member in statements (and
transactions) of its own: ~5,000 round trips, 17 s for the POST on SQLite with two workers
busy. The members' rows, their first events and the executor's acknowledgement now go in
one statement each (per 500 ids).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import SWEEP_SPEC
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from app.models import Job, JobEvent


def statements_to_create(client: TestClient, points: int) -> tuple[int, dict[str, Any]]:
    """The statements the engine ran for one POST /v1/sweeps of ``2 * points`` members (the
    commit's after-commit send included), and the created sweep."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    ran: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        ran.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        r = client.post("/v1/sweeps", json={
            "spec": SWEEP_SPEC,
            "axes": [{"path": "model.init.std", "values": [0.3, 2.0]},
                     {"path": "optimizer.lr", "log_range": [1e-3, 1.0], "points": points}]})
    finally:
        event.remove(engine, "before_cursor_execute", count)
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
    # a member's first event, and the next one numbered after it
    cancelled = client.post(f"/v1/jobs/{members[-1]}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    with factory() as session:
        got = [(e.seq, e.type, e.data["status"]) for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == members[-1]).order_by(JobEvent.seq))]
    assert got == [(1, "status", "queued"), (2, "status", "cancelled")]
