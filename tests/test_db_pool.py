"""The API under a PostgreSQL connection pool smaller than the burst it serves.

A request that creates a job commits, and the commit sends the job to the executor and
marks it sent in a session of its own (app.dispatch). That second session must not be
opened while the request's own still holds its connection: with as many concurrent
submissions as the pool has connections, each would hold one and wait for a second, until
the pool's timeout. And a request that finds no free connection in time is overload, a 503
to retry, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import SMALL_SPEC, PostgresServer, make_settings, served
from fastapi.testclient import TestClient

from app.main import create_app
from app.migrate import upgrade
from app.models import Job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A database of this test's own at the Alembic head."""
    url = postgres.create_database()
    upgrade(url)
    return url


def sent_at(app: object, job_id: str) -> object:
    with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        job = session.get(Job, job_id)
        assert job is not None
        return job.enqueued_at


def test_a_job_is_sent_and_marked_sent_with_a_pool_of_one_connection(
        pg_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=pg_url, db_pool_size=1,
                             db_max_overflow=0, db_pool_timeout_seconds=3)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", json=SMALL_SPEC)
        assert r.status_code == 202, r.text
        # marking it sent needs a connection: it gets the one the request gave back
        assert sent_at(client.app, r.json()["id"]) is not None


@pytest.fixture
def small_pool_server(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A served API with two PostgreSQL connections and a 5 s pool timeout."""
    settings = make_settings(tmp_path, database_url=pg_url, db_pool_size=2,
                             db_max_overflow=0, db_pool_timeout_seconds=5)
    app = create_app(settings)
    with served(app, log_level="warning") as url:
        yield url, app


def test_a_burst_of_submissions_larger_than_the_pool_is_served(
        small_pool_server: tuple[str, object]) -> None:
    url, app = small_pool_server

    def submit(seed: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as http:
            return http.post("/v1/jobs", json={**SMALL_SPEC, "seed": seed})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(submit, range(16)))
    assert [r.status_code for r in answers] == [202] * 16, [r.text for r in answers]
    assert all(sent_at(app, r.json()["id"]) is not None for r in answers)


def test_no_free_connection_within_the_pool_timeout_is_a_503_to_retry(
        pg_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=pg_url, db_pool_size=1,
                             db_max_overflow=0, db_pool_timeout_seconds=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        with engine.connect():  # the pool's only connection, held
            r = client.get("/v1/jobs")
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["Retry-After"] == "1"
        problem = r.json()
        assert problem["type"].endswith("/database-busy")
        assert "no database connection came free" in problem["detail"]
        assert client.get("/v1/jobs").status_code == 200  # given back: served again


def test_a_download_streams_with_a_pool_of_one_connection(pg_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=pg_url, db_pool_size=1,
                             db_max_overflow=0, db_pool_timeout_seconds=3)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        job_id = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
        for name, start in (("metrics.csv", b"step,"), ("gradients.csv", b"step,"),
                            ("metrics.parquet", b"PAR1")):
            r = client.get(f"/v1/jobs/{job_id}/{name}")
            assert r.status_code == 200, (name, r.text)
            # the job is queued: a header row, or a Parquet file with no rows
            assert r.content.startswith(start), (name, r.content[:40])
