"""Enqueue that cannot lose a job (app.dispatch), against the real PostgreSQL, Redis and Celery.

The API reaches Redis through a TCP proxy the test can cut, as a broker outage would; the
workers reach Redis directly. A job committed while the broker is away, or committed by an
API process that died before its after-commit hook ran, is not sent — and still runs: the
sweeper of the API process re-sends every queued job whose id no executor accepted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PostgresServer
from sqlalchemy.engine import make_url
from test_integration import TINY_SPEC, Cluster

from app.db import build_engine, build_sessionmaker, unit_of_work
from app.services import submit_job, validate_spec
from app.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`cut` drops every connection and stops
    listening (the broker is gone), :meth:`restore` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer,
            redis_broker: tuple[str, str]) -> Iterator[tuple[Cluster, TcpProxy]]:
    """A cluster (API + one worker) whose API reaches the broker through a TcpProxy."""
    broker_url, prefix = redis_broker
    url = make_url(broker_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 6379))
    proxy.restore()
    cluster = Cluster(tmp_path_factory.mktemp("enqueue"), postgres.create_database(),
                      (broker_url, prefix))
    cluster.env["GRADWATCH_ENQUEUE_RETRY_SECONDS"] = "1"
    try:
        cluster.migrate()
        cluster.start_worker()
        worker_env = dict(cluster.env)
        cluster.env["GRADWATCH_BROKER_URL"] = url.set(port=proxy.port).render_as_string(
            hide_password=False)
        cluster.start_api()  # the API's broker is the proxy; the worker's is Redis itself
        cluster.env = worker_env
        cluster.wait_workers_ready()
        yield cluster, proxy
    finally:
        proxy.cut()
        cluster.stop()


def test_a_job_committed_while_the_broker_is_down_runs_when_it_is_back(
        proxied: tuple[Cluster, TcpProxy]) -> None:
    cluster, proxy = proxied
    proxy.cut()
    job_id = cluster.submit(TINY_SPEC)  # committed; the publish fails
    time.sleep(3)
    assert cluster.row(job_id)["enqueued_at"] is None  # not marked sent: it was not
    assert cluster.job(job_id)["status"] == "queued"
    proxy.restore()
    job = cluster.wait_terminal(job_id, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert cluster.row(job_id)["enqueued_at"] is not None


def test_a_job_whose_api_died_between_commit_and_send_still_runs(
        proxied: tuple[Cluster, TcpProxy]) -> None:
    cluster, _ = proxied
    settings = Settings(database_url=cluster.database_url, executor="celery")
    engine = build_engine(cluster.database_url, pool_size=1)
    try:
        # what a dying API process leaves behind: the commit happened, its hook never ran
        with unit_of_work(build_sessionmaker(engine)) as session:
            job_id = submit_job(session, spec=validate_spec(TINY_SPEC, settings),
                                settings=settings).job.id
    finally:
        engine.dispose()
    job: dict[str, Any] = cluster.wait_terminal(job_id, timeout=120)
    assert job["status"] == "succeeded", job["error"]
