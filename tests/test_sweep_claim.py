"""Claiming a sweep group while another worker's group takes the same member (PostgreSQL:
concurrent claims really interleave there; SQLite serialises writers from the start)."""

from __future__ import annotations

from typing import Any

from conftest import SMALL_SPEC, PgStore
from sqlalchemy import event, select, update
from sqlalchemy.orm import ORMExecuteState

from app.db import unit_of_work
from app.models import Job
from app.sweep_worker import _claim_group
from app.sweeps import SweepCreate, create_sweep
from app.tenancy import ADMIN
from core.sweep import SweepAxis

TINY: dict[str, Any] = {**SMALL_SPEC, "training": {"epochs": 1, "batch_size": 60}}


def test_a_member_taken_between_the_read_and_the_claim_leaves_its_siblings_queued(
        pg_store: PgStore) -> None:
    settings, engine, factory = pg_store.settings, pg_store.engine, pg_store.factory
    with unit_of_work(factory) as session:
        sweep, job_ids = create_sweep(
            session, settings=settings, principal=ADMIN,
            body=SweepCreate(name="race", spec=TINY,
                             axes=[SweepAxis(path="seed", values=[0, 1, 2, 3])]))
        sweep_id = sweep.id
    own = job_ids[0]
    taken: list[str] = []

    def other_worker_claims_own(state: ORMExecuteState) -> None:
        """Just before this claim's first move: another worker's group commits its
        claim of ``own`` (this claim has read ``own`` as queued)."""
        if state.is_update and not taken:
            taken.append(own)
            with engine.begin() as conn:
                conn.execute(update(Job).where(Job.id == own).values(
                    status="running", worker_id="other", attempts=Job.attempts + 1))

    event.listen(factory, "do_orm_execute", other_worker_claims_own)
    claimed = _claim_group(factory, own, sweep_id, "this", 1, settings)
    event.remove(factory, "do_orm_execute", other_worker_claims_own)

    assert taken == [own]
    assert claimed == []  # its own member went elsewhere: it claims nothing
    with factory() as session:
        rows = {j.id: (j.status, j.worker_id, j.attempts) for j in session.scalars(
            select(Job).where(Job.parent_sweep_id == sweep_id))}
    assert rows[own] == ("running", "other", 1)
    # no sibling left "running" under a worker that will never train it (it would wait
    # for the reaper's heartbeat timeout and be trained a second time)
    assert all(rows[j] == ("queued", None, 0) for j in job_ids[1:]), rows
