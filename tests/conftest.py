"""Shared fixtures: Alembic-migrated temp SQLite databases, apps, a live server with workers;
the real PostgreSQL and Redis for the integration tests."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.db import build_engine, build_sessionmaker
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from client import Client

SMALL_SPEC: dict[str, Any] = {
    "name": "small",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 120},
    "model": {"hidden": [{"units": 8}, {"units": 8}]},
    "training": {"epochs": 2, "batch_size": 32},
}

# every ReLU dead from the start (bias -10): the hidden layers' gradients are exactly 0
DEAD_SPEC: dict[str, Any] = {
    "name": "dead relus", "data": {"source": "synthetic", "name": "moons", "n_samples": 200},
    "model": {"hidden": [{"units": 16}, {"units": 16}],
              "init": {"scheme": "he_normal", "bias": -10.0}},
    "training": {"epochs": 2, "batch_size": 50},
}

# fitted exactly after one step (the output bias lands on the target): loss 1, then exactly 0
FITTED_SPEC: dict[str, Any] = {
    "name": "fitted exactly",
    "data": {"source": "inline", "task": "regression", "X": [[0.0, 0.0]] * 4, "y": [1.0] * 4},
    "model": {"hidden": [{"units": 4}]},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "training": {"epochs": 6, "batch_size": 4, "validation_split": 0.0},
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

# Sweeps: a deep net on the spirals whose wide init at a large learning rate explodes.
SWEEP_SPEC: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
    "model": {"hidden": [{"units": 16}] * 6, "init": {"scheme": "normal", "std": 0.3}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 4, "batch_size": 32},
}
# The same question smaller and shorter (the client's tests), and a 2 x 2 grid for it.
SWEEP_SPEC_SMALL: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 120},
    "model": {"hidden": [{"units": 8}] * 4, "init": {"scheme": "normal", "std": 0.3}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 2, "batch_size": 32},
}
SWEEP_AXES: list[dict[str, Any]] = [{"path": "model.init.std", "values": [0.3, 3.0]},
                              {"path": "optimizer.lr", "log_range": [1e-3, 0.5], "points": 2}]


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


@contextmanager
def served(app: Any, **config: Any) -> Iterator[str]:
    """uvicorn serving ``app`` in a thread on a free port (``config``: more
    ``uvicorn.Config`` options); yields its base URL, stops it on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on",
                                           **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def counting_statements(client: TestClient) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs meanwhile (an executemany counts once)."""
    statements: list[str] = []
    engine = client.app.state.engine  # type: ignore[attr-defined]

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


class LiveServer:
    """uvicorn serving a real app (with local worker processes) on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._served = served(self.app, log_level="warning")

    def __enter__(self) -> LiveServer:
        self.url = self._served.__enter__()
        self.http = httpx.Client(base_url=self.url, timeout=30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()
        self._served.__exit__(None, None, None)

    def wait_for(self, job_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['status']}, not {statuses}")
            time.sleep(0.05)

    def wait_sweep(self, sweep_id: str, timeout: float = 150) -> dict[str, Any]:
        """The sweep once no member is queued or running."""
        deadline = time.monotonic() + timeout
        while True:
            sweep: dict[str, Any] = self.http.get(f"/v1/sweeps/{sweep_id}").json()
            if sweep["status"] not in ("queued", "running"):
                return sweep
            if time.monotonic() > deadline:
                raise AssertionError(f"sweep {sweep_id} still {sweep['status']}: "
                                     f"{sweep['progress']}")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server with two local worker processes for the end-to-end tests."""
    tmp = tmp_path_factory.mktemp("live")
    settings = make_settings(tmp, workers=2, max_job_runtime_seconds=120)
    with LiveServer(settings) as server:
        yield server


# --------------------------------------------------------------------------------------------
# Integration: the real PostgreSQL and Redis of the project's machines (marker `integration`).
# Each test session works in its own database (created here, dropped afterwards) and under
# its own Redis key prefix in db 11 (deleted afterwards), so parallel sessions never meet.
# Outside CI an unreachable service skips these tests with a message; under CI=true it fails.
# --------------------------------------------------------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get(
    "GRADWATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("GRADWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def service_unavailable(what: str, url: str, variable: str, error: BaseException) -> NoReturn:
    message = (f"integration tests need {what}, unreachable at {url} ({type(error).__name__}: "
               f"{' '.join(str(error).split())[:160]}); start it, or set {variable}.")
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} Under CI=true this is a failure, not a skip.", pytrace=False)
    pytest.skip(message)


class PostgresServer:
    """Creates throw-away databases on the test server; drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        self._text = text
        self.admin_url = make_url(admin_url)
        self.engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT",
                                    poolclass=NullPool, connect_args={"connect_timeout": 5})
        self.created: list[str] = []
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            self.engine.dispose()
            service_unavailable("PostgreSQL", self.admin_url.render_as_string(),
                                "GRADWATCH_TEST_POSTGRES_URL", exc)

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"gradwatch_test_{uuid.uuid4().hex[:12]}"
        with self.engine.connect() as conn:
            conn.execute(self._text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.engine.connect() as conn:
            for name in self.created:
                conn.execute(self._text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(POSTGRES_ADMIN_URL)
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """This session's database, migrated to the Alembic head."""
    url = postgres.create_database()
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[tuple[str, str]]:
    """(broker URL, key prefix): Redis db 11 and a key prefix of this session's own."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        service_unavailable("Redis", REDIS_TEST_URL, "GRADWATCH_TEST_REDIS_URL", exc)
    prefix = f"gradwatch-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield REDIS_TEST_URL, prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
        client.close()


# --------------------------------------------------------------------------------------------
# The reliability suite (tests/reliability/): a real `gradwatch serve` under a memory cap.
# --------------------------------------------------------------------------------------------

# The API process may use this much data memory (RLIMIT_DATA: heap and anonymous mappings);
# a request that would need more kills it, which the tests would see.
API_DATA_LIMIT = 1024 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("GRADWATCH_") and k != "DATABASE_URL"}
        self.env = {**base, "PYTHONUNBUFFERED": "1", "GRADWATCH_DATA_DIR": str(tmp),
                    "GRADWATCH_WORKERS": "0", **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> Server:
        def cap() -> None:
            resource.setrlimit(resource.RLIMIT_DATA, (API_DATA_LIMIT, API_DATA_LIMIT))

        script = Path(sys.executable).with_name("gradwatch")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(script), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=cap,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def alive(self) -> bool:
        """The process still runs and answers /healthz."""
        assert self.process is not None
        return self.process.poll() is None and self.http.get("/healthz").status_code == 200

    def peak_rss(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(kib) * 1024

    def stop(self) -> None:
        self.http.close()
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``gradwatch serve`` (SQLite, no workers unless asked) under RLIMIT_DATA."""
    servers: list[Server] = []

    def start(**env: Any) -> Server:
        sub = tmp_path / f"server{len(servers)}"
        sub.mkdir()
        server = Server(sub, {k: str(v) for k, v in env.items()})
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def gw(live: LiveServer) -> Iterator[Client]:
    """A Python client of the live server."""
    with Client(live.url) as client:
        yield client


@dataclass
class PgStore:
    """A fresh PostgreSQL database at the Alembic head (see :func:`pg_store`)."""

    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]


@pytest.fixture
def pg_store(postgres: PostgresServer, tmp_path: Path) -> Iterator[PgStore]:
    """A new PostgreSQL database migrated to the head: settings naming it, an engine and its
    sessions (for tests that interleave transactions, which SQLite would serialise)."""
    url = postgres.create_database()
    upgrade(url)
    engine = build_engine(url)
    try:
        yield PgStore(Settings(database_url=url, data_dir=tmp_path), engine,
                      build_sessionmaker(engine))
    finally:
        engine.dispose()
