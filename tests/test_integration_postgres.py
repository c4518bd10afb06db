"""PostgreSQL backend against the real server: migrations, bulk ingest, non-finite numbers."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from conftest import SMALL_SPEC, PostgresServer, make_settings
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from app.db import build_engine, build_sessionmaker, unit_of_work
from app.lifecycle import move_job
from app.main import create_app
from app.migrate import alembic_config, current_revision, downgrade, head_revision, upgrade
from app.repositories import Claim, HistoryRepository
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
        history = HistoryRepository(session)
        got = [r.grad_norm for r in history.all_steps(job_id)]
        assert math.isnan(got[0]) and got[1:] == values[1:]
        assert math.copysign(1.0, got[4]) == -1.0  # -0.0 keeps its sign
        layer = history.all_layers(job_id)[0]
        assert math.isnan(layer.grad_norm) and layer.act_mean is None  # NULL stays "no value"
        assert math.isnan(layer.act_std)  # type: ignore[arg-type]
        # what PostgreSQL holds: float8 NaN / Infinity, never NULL, never clamped
        raw = session.execute(text(
            "SELECT grad_norm::text, grad_norm IS NULL FROM step_metrics WHERE job_id = :j "
            "ORDER BY step LIMIT 3"), {"j": job_id}).all()
        assert raw == [("NaN", False), ("Infinity", False), ("-Infinity", False)]


def test_bulk_ingest_uses_copy_and_stores_what_executemany_stores(
        factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [record(i, float(i) if i % 7 else NAN) for i in range(1500)]
    fast, plain = new_running_job(factory, tmp_path), new_running_job(factory, tmp_path)

    def store(job_id: str) -> None:
        sink = DatabaseSink(job_id, factory, total_steps=1500, flush_every=500,
                            claim=Claim("test:1", 0))
        sink.write_steps(rows)
        sink.close()
        assert not sink.lost

    def refuse(*_: Any) -> None:
        raise AssertionError("PostgreSQL ingest should take the COPY path")

    monkeypatch.setattr(HistoryRepository, "_executemany", refuse)
    store(fast)
    monkeypatch.undo()
    monkeypatch.setattr(HistoryRepository, "_copy", HistoryRepository._executemany)
    store(plain)

    def table(job_id: str, sql: str) -> list[tuple[str, ...]]:
        with factory() as session:  # repr: NaN equals NaN, -0.0 differs from 0.0
            return [tuple(map(repr, r)) for r in session.execute(text(sql), {"j": job_id}).all()]

    for sql in ("SELECT step, epoch, loss, grad_norm, clipped_grad_norm, lr, clipped "
                "FROM step_metrics WHERE job_id = :j ORDER BY step",
                "SELECT layer, step, grad_norm, act_mean, act_std, dead_fraction, "
                "saturated_fraction FROM layer_stats WHERE job_id = :j ORDER BY step, layer",
                "SELECT level, layer, block, data FROM series_rollups WHERE job_id = :j "
                "ORDER BY level, layer, block"):
        a, b = table(fast, sql), table(plain, sql)
        assert a == b and len(a) > 0


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
