"""The service's processes for the benchmarks: `gradwatch serve` and `gradwatch worker` in
subprocesses, a throw-away PostgreSQL database and a Redis key prefix of a run's own.

Shared by bench/service_bench.py, bench/history_store.py and bench/history_pages.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

__all__ = ["ROOT", "Server", "Workers", "broker_prefix", "postgres_database", "service_env",
           "stop"]

ROOT = Path(__file__).resolve().parent.parent


def service_env(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GRADWATCH_") and k != "DATABASE_URL"}
    return {**env, "GRADWATCH_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **extra}


class Server:
    """`gradwatch serve` in a subprocess (so the client does not share its GIL)."""

    def __init__(self, data_dir: Path, port: int, workers: int = 1,
                 extra_env: dict[str, str] | None = None) -> None:
        env = service_env(data_dir, {"GRADWATCH_WORKERS": str(workers), **(extra_env or {})})
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port),
             "--log-level", "warning"], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def run_job(self, spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        job_id = self.http.post("/v1/jobs", json=spec).json()["id"]
        while True:
            job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return time.perf_counter() - t0, job
            time.sleep(0.01)

    def close(self) -> None:
        self.http.close()
        stop(self.proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Workers:
    """`gradwatch worker --concurrency C` processes (celery executor)."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str]) -> None:
        self.env = service_env(data_dir, extra_env)
        self.data_dir = data_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, n: int, concurrency: int = 1) -> None:
        for _ in range(n):
            log = self.data_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(concurrency)],
                    env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            self.procs.append((proc, log))
        deadline = time.monotonic() + 60
        for proc, log in self.procs:
            while b" ready." not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            stop(proc)
        self.procs.clear()


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A throw-away database on the server of ``admin_url``; its URL."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"gradwatch_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def broker_prefix(broker_url: str) -> Iterator[str]:
    """A Redis key prefix of this run's own, its keys deleted at the end."""
    prefix = f"gradwatch-bench-{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(broker_url)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
