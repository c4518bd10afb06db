"""Shared fixtures: Alembic-migrated temp SQLite databases, apps, a live server with workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.db import build_engine, build_sessionmaker
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings

SMALL_SPEC: dict[str, Any] = {
    "name": "small",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 120},
    "model": {"hidden": [{"units": 8}, {"units": 8}]},
    "training": {"epochs": 2, "batch_size": 32},
}

# Runs for many seconds (tens of thousands of tiny steps): something to cancel or kill.
LONG_SPEC: dict[str, Any] = {
    "name": "long",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 400},
    "model": {"hidden": [{"units": 16}, {"units": 16}]},
    "optimizer": {"name": "sgd", "lr": 0.001},
    "training": {"epochs": 2000, "batch_size": 8, "validation_split": 0.0},
    "monitor": {"stop_on_explosion": False},
}


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp,
        "database_url": f"sqlite:///{tmp / 'gradwatch.db'}",
        "workers": 0,
        "flush_every_steps": 20,
        "flush_interval_seconds": 0.2,
        "progress_event_interval_seconds": 0.2,
        "events_poll_seconds": 0.05,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def migrated_url(tmp_path: Path) -> str:
    """A fresh SQLite database at the Alembic head."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture
def session_factory(migrated_url: str) -> Iterator[Any]:
    engine = build_engine(migrated_url)
    yield build_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient for an app with the given settings overrides (no workers by default)."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        sub = tmp_path / f"app{len(clients)}"
        sub.mkdir()
        client = TestClient(create_app(make_settings(sub, **overrides)),
                            raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """An app without workers: submitted jobs stay queued."""
    return make_client()


class LiveServer:
    """uvicorn serving a real app (with local worker processes) on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def wait_for(self, job_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['status']}, not {statuses}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server with two local worker processes for the end-to-end tests."""
    tmp = tmp_path_factory.mktemp("live")
    settings = make_settings(tmp, workers=2, max_job_runtime_seconds=120)
    with LiveServer(settings) as server:
        yield server
