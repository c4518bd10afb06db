"""PostgreSQL backend against the real server: migrations, bulk ingest, non-finite numbers."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from conftest import SMALL_SPEC, PostgresServer, make_settings
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from app.db import build_engine, build_sessionmaker, unit_of_work
from app.history import HistoryQuery, gradient_history, recorded_steps
from app.jsonutil import encode_non_finite
from app.lifecycle import move_job
from app.main import create_app
from app.migrate import alembic_config, current_revision, downgrade, head_revision, upgrade
from app.models import Job
from app.repositories import Claim
from app.services import submit_job, validate_spec
from app.sink import DatabaseSink
from core.telemetry import LayerRecord, NonFiniteEvent, StepRecord

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAN, INF = math.nan, math.inf


@pytest.fixture
def factory(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    engine = build_engine(postgres_url)
    yield build_sessionmaker(engine)
    engine.dispose()


def new_running_job(factory: sessionmaker[Session], tmp_path: Path) -> str:
    settings = make_settings(tmp_path)
    with unit_of_work(factory) as session:
        job_id: str = submit_job(session, spec=validate_spec(SMALL_SPEC, settings),
                                 settings=settings).job.id
        move_job(session, job_id, "running", worker_id="test:1")
    return job_id


def record(step: int, grad: float, loss: float = 1.0) -> StepRecord:
    return StepRecord(step=step, epoch=0, loss=loss, grad_norm=grad, clipped_grad_norm=grad,
                      lr=0.1, clipped=step % 2 == 0, layers=[
                          LayerRecord(layer=i, grad_norm=grad, weight_grad_norm=grad,
                                      weight_norm=1.0, update_norm=0.01, act_mean=None,
                                      act_std=grad, dead_fraction=0.5, saturated_fraction=None)
                          for i in range(2)])


def test_migrations_upgrade_downgrade_upgrade_on_postgres(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    upgrade(url)
    command.check(alembic_config(url))  # the models and the migrations agree on PostgreSQL too
    engine = build_engine(url, pool=False)
    try:
        assert current_revision(engine) == head_revision()
        assert "attempts" in {c["name"] for c in inspect(engine).get_columns("jobs")}
        downgrade(url, "0001")
        assert "attempts" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_processes_starting_together_migrate_one_at_a_time(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade(url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = build_engine(url, pool=False)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_nan_and_infinities_round_trip_through_postgres(factory: sessionmaker[Session],
                                                        tmp_path: Path) -> None:
    job_id = new_running_job(factory, tmp_path)
    values = [NAN, INF, -INF, 0.0, -0.0, 1e308, 5e-324]
    sink = DatabaseSink(job_id, factory, total_steps=len(values), flush_every=1000)
    sink.write_steps([record(i, v, loss=v) for i, v in enumerate(values)])
    sink.close()
    with factory() as session:
        steps = recorded_steps(session, job_id)
        got = [r.grad_norm for r in steps]
        assert math.isnan(got[0]) and got[1:] == values[1:]
        assert math.copysign(1.0, got[4]) == -1.0  # -0.0 keeps its sign
        layer = steps[0].layers[0]
        assert math.isnan(layer.grad_norm) and layer.act_mean is None  # None stays "no value"
        assert math.isnan(layer.act_std)  # type: ignore[arg-type]
        # what PostgreSQL holds: one bytea chunk for the flush, under the job's integer key
        raw = session.execute(text(
            "SELECT pg_typeof(c.data)::text, c.n_steps, pg_typeof(c.job_key)::text "
            "FROM history_chunks c JOIN history_keys k ON k.key = c.job_key "
            "WHERE k.job_id = :j"), {"j": job_id}).all()
        assert raw == [("bytea", len(values), "integer")]


def test_postgres_and_sqlite_store_and_answer_the_same_history(
        factory: sessionmaker[Session], tmp_path: Path) -> None:
    rows = [record(i, float(i) if i % 7 else NAN) for i in range(1500)]
    sqlite_url = f"sqlite:///{tmp_path / 'same.db'}"
    upgrade(sqlite_url)
    sqlite_engine = build_engine(sqlite_url)
    sqlite_factory = build_sessionmaker(sqlite_engine)
    answers = []
    for f in (factory, sqlite_factory):
        job_id = new_running_job(f, tmp_path)
        sink = DatabaseSink(job_id, f, total_steps=1500, flush_every=500,
                            claim=Claim("test:1", 0))
        sink.write_steps(rows)
        sink.close()
        assert not sink.lost
        with f() as session:  # repr: NaN equals NaN, -0.0 differs from 0.0
            stored = [repr(r) for r in recorded_steps(session, job_id)]
            job = session.get(Job, job_id)
            assert job is not None
            job.spec = {**job.spec, "model": {"hidden": [{}]}}
            history = gradient_history(session, job, HistoryQuery(None, None, 100),
                                       layer=None, metrics=None)
            history.pop("job_id")
        answers.append((stored, json.dumps(encode_non_finite(history))))
    sqlite_engine.dispose()
    assert answers[0] == answers[1]
    assert len(answers[0][0]) == 1500


def test_the_api_serves_histories_with_non_finite_numbers_from_postgres(
        postgres_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=postgres_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        job_id = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
        factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
        with unit_of_work(factory) as session:
            move_job(session, job_id, "running")
        sink = DatabaseSink(job_id, factory, total_steps=4, flush_every=1000)
        sink.write_non_finite(NonFiniteEvent(1, 0, "gradient", "inf"))  # as the trainer does
        sink.write_steps([record(0, 1.0), record(1, INF), record(2, NAN, loss=NAN),
                          record(3, -INF)])
        sink.close()
        grads = client.get(f"/v1/jobs/{job_id}/gradients").json()
        assert grads["layers"][0]["series"]["grad_norm"]["values"] == [
            1.0, "Infinity", "NaN", "-Infinity"]
        assert client.get(f"/v1/jobs/{job_id}").json()["first_non_finite"]["step"] == 1
        listed = client.get("/v1/jobs", params={"limit": 1}).json()
        assert listed["items"][0]["id"] == job_id  # cursor pagination on timestamptz
