"""Scale-out end to end: `gradwatch serve` + `gradwatch worker` processes, PostgreSQL, Redis.

The processes are started with the same console commands the Docker image runs
(:data:`COMMANDS`, checked against docker-compose.yml by tests/test_docker.py). Every job
goes through the HTTP API; the assertions read the API and, for row counts, the database.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LONG_SPEC, PostgresServer
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db import build_engine
from app.history import recorded_steps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TERMINAL = {"succeeded", "failed", "cancelled"}

# The console commands of the scale-out setup (the Docker image runs the same ones).
COMMANDS: dict[str, list[str]] = {
    "migrate": ["gradwatch", "migrate"],
    "api": ["gradwatch", "serve"],
    "worker": ["gradwatch", "worker", "--concurrency", "1"],
}

# A few seconds of training: long enough to be caught mid-run, short enough to re-run.
MEDIUM_SPEC: dict[str, Any] = {**LONG_SPEC, "name": "medium",
                               "training": {**LONG_SPEC["training"], "epochs": 500}}
TINY_SPEC: dict[str, Any] = {
    "name": "tiny", "data": {"source": "synthetic", "name": "spirals", "n_samples": 60},
    "model": {"hidden": [{"units": 4}]}, "training": {"epochs": 1, "batch_size": 32},
}


def gradwatch(*args: str) -> list[str]:
    """The installed console script (as in the image), else the module."""
    script = Path(sys.executable).with_name("gradwatch")
    if script.exists():
        return [str(script), *args]
    found = shutil.which("gradwatch")
    return [found, *args] if found else [sys.executable, "-m", "app.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """An API and Celery workers as subprocesses, each in its own process group.

    Processes are stopped by their own process-group id (the pid this class started), never
    by name, so nothing else on the machine is touched.
    """

    def __init__(self, tmp: Path, database_url: str, broker: tuple[str, str]) -> None:
        self.tmp = tmp
        self.database_url = database_url
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GRADWATCH_") and k != "DATABASE_URL"}
        self.env = {
            **env, "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "GRADWATCH_DATA_DIR": str(tmp),
            "GRADWATCH_EXECUTOR": "celery",
            "GRADWATCH_BROKER_URL": broker[0],
            "GRADWATCH_BROKER_KEY_PREFIX": broker[1],
            "GRADWATCH_QUEUE": f"gradwatch-test-{uuid.uuid4().hex[:8]}",
            # fast recovery for the tests; generous enough for a loaded 2-core machine
            "GRADWATCH_HEARTBEAT_TIMEOUT_SECONDS": "6",
            "GRADWATCH_REAPER_INTERVAL_SECONDS": "0.5",
            "GRADWATCH_SHUTDOWN_GRACE_SECONDS": "1",
            "GRADWATCH_MAX_ATTEMPTS": "3",
            "GRADWATCH_MAX_JOB_RUNTIME_SECONDS": "300",
            "GRADWATCH_FLUSH_INTERVAL_SECONDS": "0.2",
            "GRADWATCH_PROGRESS_EVENT_INTERVAL_SECONDS": "0.2",
            "GRADWATCH_DB_POOL_SIZE": "5",
            # the webhook receiver of the tests listens on loopback
            "GRADWATCH_WEBHOOK_ALLOW_PRIVATE": "true",
            "GRADWATCH_WEBHOOK_BACKOFF_SECONDS": "0.2",
            "GRADWATCH_WEBHOOK_POLL_SECONDS": "0.2",
        }
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.engine = build_engine(database_url, pool_size=2)

    # ---- processes ----
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            return subprocess.Popen(gradwatch(*args), env=self.env, cwd=self.tmp, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def migrate(self) -> None:
        result = subprocess.run(gradwatch(*COMMANDS["migrate"][1:]), env=self.env, cwd=self.tmp,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]

    def start_api(self) -> None:
        args = [*COMMANDS["api"][1:], "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "warning"]
        self.api = self._spawn("api", args)
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.api.poll() is None, f"the API exited:\n{self.tail('api')}"
            assert time.monotonic() < deadline, f"the API did not get ready:\n{self.tail('api')}"
            time.sleep(0.2)

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn(f"worker{len(self.workers)}", COMMANDS["worker"][1:])
        self.workers.append(worker)
        return worker

    def wait_workers_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for i, worker in enumerate(self.workers):
            if worker.poll() is not None:
                continue
            log = self.tmp / f"worker{i}.log"
            while b" ready." not in log.read_bytes():
                assert worker.poll() is None, f"worker {i} exited:\n{self.tail(f'worker{i}')}"
                assert time.monotonic() < deadline, f"worker {i} not ready:\n{self.tail(f'worker{i}')}"
                time.sleep(0.1)

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    def ensure_workers(self, n: int) -> None:
        while len(self.live_workers()) < n:
            self.start_worker()
        self.wait_workers_ready()

    def worker_of(self, job_id: str) -> subprocess.Popen[bytes]:
        """Our worker process whose pool child runs ``job_id`` (found by process group)."""
        worker_id = self.row(job_id)["worker_id"]
        pid = int(worker_id.rpartition(":")[2])
        group = os.getpgid(pid)
        for worker in self.live_workers():
            if worker.pid == group:
                return worker
        raise AssertionError(f"job {job_id} runs in pid {pid}, not in one of our workers")

    def kill_group(self, process: subprocess.Popen[bytes], sig: int) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)  # our own group: the worker and its pool children

    def stop(self) -> None:
        self.http.close()
        processes = [p for p in [self.api, *self.workers] if p is not None]
        for process in processes:
            self.kill_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            self.kill_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.engine.dispose()

    def tail(self, name: str, n: int = 3000) -> str:
        log = self.tmp / f"{name}.log"
        return log.read_text(errors="replace")[-n:] if log.exists() else ""

    # ---- jobs ----
    def submit(self, spec: dict[str, Any], client: httpx.Client | None = None) -> str:
        r = (client or self.http).post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        job_id: str = r.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
        return job

    def wait_for(self, job_id: str, predicate: Any, what: str, timeout: float = 120
                 ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never {what}: {job}\n"
                                     f"{self.tail('api', 1500)}")
            time.sleep(0.1)

    def wait_terminal(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return self.wait_for(job_id, lambda j: j["status"] in TERMINAL, "finished", timeout)

    def wait_running(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(job_id, lambda j: j["status"] == "running"
                             and j["progress"]["step"] > 0, "ran", timeout)

    def row(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).one()
        return dict(row._mapping)

    def history_counts(self, job_id: str) -> dict[str, int]:
        with Session(self.engine) as session:
            rows = session.execute(text(
                "SELECT coalesce(sum(c.n_steps), 0) FROM history_chunks c JOIN history_keys k "
                "ON k.key = c.job_key WHERE k.job_id = :id"), {"id": job_id}).scalar()
            steps = [r.step for r in recorded_steps(session, job_id)]
            layer_rows = sum(len(r.layers) for r in recorded_steps(session, job_id))
        return {"rows": rows, "distinct_steps": len(set(steps)), "layer_rows": layer_rows,
                "first": min(steps, default=None), "last": max(steps, default=None)}

    def status_events(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT data FROM job_events WHERE job_id = :id AND "
                                     "type = 'status' ORDER BY seq"), {"id": job_id}).all()
        return [r[0] for r in rows]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer,
            redis_broker: tuple[str, str]) -> Iterator[Cluster]:
    """A migrated database of its own, the API and two workers (concurrency 1 each)."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), postgres.create_database(),
                      redis_broker)
    try:
        cluster.migrate()
        cluster.start_worker()
        cluster.start_worker()
        cluster.start_api()
        cluster.wait_workers_ready()
        yield cluster
    finally:
        cluster.stop()


def assert_history_once(cluster: Cluster, job: dict[str, Any]) -> None:
    """Every step of the run stored exactly once: nothing lost, nothing duplicated."""
    total = job["progress"]["total_steps"]
    counts = cluster.history_counts(job["id"])
    layers = len(job["spec"]["model"]["hidden"]) + 1
    assert counts == {"rows": total, "distinct_steps": total, "layer_rows": total * layers,
                      "first": 0, "last": total - 1}, counts


def test_jobs_run_concurrently_on_two_workers(cluster: Cluster) -> None:
    cluster.ensure_workers(2)
    ids = [cluster.submit({**MEDIUM_SPEC, "seed": i, "training": {
        **MEDIUM_SPEC["training"], "epochs": 150}}) for i in range(4)]
    jobs = [cluster.wait_terminal(job_id) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 4, [j["error"] for j in jobs]
    rows = [cluster.row(job_id) for job_id in ids]
    assert len({r["worker_id"] for r in rows}) >= 2  # both workers ran jobs
    spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
    assert any(a[1] > b[0] for a, b in itertools.pairwise(spans)), "never in parallel"
    for job in jobs:
        assert job["attempts"] == 1
        assert_history_once(cluster, cluster.http.get(f"/v1/jobs/{job['id']}").json())
    grads = cluster.http.get(f"/v1/jobs/{ids[0]}/gradients", params={"max_points": 100}).json()
    assert grads["downsampled"] and len(grads["layers"]) == 3
    report = cluster.http.get(f"/v1/jobs/{ids[0]}/diagnostics").json()
    assert report["final"] is True and report["verdict"] == jobs[0]["verdict"]


def test_cancel_stops_a_job_running_on_another_machine(cluster: Cluster) -> None:
    cluster.ensure_workers(2)
    job_id = cluster.submit(LONG_SPEC)
    cluster.wait_running(job_id)
    r = cluster.http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    job = cluster.wait_terminal(job_id, timeout=60)
    assert job["status"] == "cancelled" and job["stop_reason"] == "cancelled"
    assert 0 < job["progress"]["step"] < job["progress"]["total_steps"]
    assert cluster.history_counts(job_id)["rows"] == job["progress"]["step"]


def test_a_job_whose_worker_is_killed_is_requeued_and_runs_once_to_the_end(cluster: Cluster
                                                                            ) -> None:
    cluster.ensure_workers(2)
    job_id = cluster.submit(MEDIUM_SPEC)
    cluster.wait_running(job_id)
    victim = cluster.worker_of(job_id)
    cluster.kill_group(victim, signal.SIGKILL)  # kill -9: the machine is gone, mid-job
    assert victim.wait(timeout=30) == -signal.SIGKILL
    cluster.start_worker()  # a replacement, as an orchestrator would start

    job = cluster.wait_terminal(job_id, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] >= 2
    events = cluster.status_events(job_id)
    requeued = [e for e in events if e.get("requeued")]
    assert requeued and requeued[0]["reason"].startswith("worker lost: no heartbeat")
    assert_history_once(cluster, job)
    assert cluster.row(job_id)["worker_id"] != f"{socket.gethostname()}:{victim.pid}"


def test_sigterm_lets_a_worker_hand_its_running_job_back(cluster: Cluster) -> None:
    cluster.ensure_workers(2)
    job_id = cluster.submit(MEDIUM_SPEC)
    cluster.wait_running(job_id)
    leaving = cluster.worker_of(job_id)
    os.kill(leaving.pid, signal.SIGTERM)  # warm shutdown, as `docker stop` does
    assert leaving.wait(timeout=60) == 0, cluster.tail(f"worker{cluster.workers.index(leaving)}")

    job = cluster.wait_terminal(job_id, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1  # a hand-back does not spend an attempt
    reasons = [e["reason"] for e in cluster.status_events(job_id) if e.get("requeued")]
    assert reasons and "shut down" in reasons[0]
    assert_history_once(cluster, job)


def test_fifty_concurrent_submissions_all_reach_a_terminal_state(cluster: Cluster) -> None:
    cluster.ensure_workers(2)

    def submit(i: int) -> str:
        with httpx.Client(base_url=cluster.url, timeout=60) as client:
            return cluster.submit({**TINY_SPEC, "seed": i}, client)

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(submit, range(50)))
    assert len(set(ids)) == 50
    deadline = time.monotonic() + 240
    pending = set(ids)
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} jobs never finished"
        page = cluster.http.get("/v1/jobs", params={"limit": 100, "status": sorted(TERMINAL)}
                                ).json()["items"]
        pending -= {j["id"] for j in page}
        time.sleep(0.25)
    statuses = [cluster.job(job_id)["status"] for job_id in ids]
    assert statuses == ["succeeded"] * 50
    started = [cluster.row(job_id)["started_at"] for job_id in ids]
    assert all(isinstance(s, datetime) for s in started)


def test_the_container_health_check_answers_for_the_api_and_for_a_worker(cluster: Cluster) -> None:
    cluster.ensure_workers(1)

    def check(**env: str) -> int:
        return subprocess.run([sys.executable, "-m", "app.healthcheck"], env={**cluster.env, **env},
                              capture_output=True, timeout=60).returncode

    assert check(PORT=str(cluster.port)) == 0  # the API answers /healthz
    assert check(PORT=str(free_port())) == 0  # no API here: a worker of this host answers a ping
    nobody = cluster.env["GRADWATCH_BROKER_KEY_PREFIX"] + "nobody-here:"  # cleaned up too
    assert check(PORT=str(free_port()), GRADWATCH_BROKER_KEY_PREFIX=nobody) == 1


def test_celery_workers_deliver_signed_webhooks_and_metrics_count_across_processes(
        cluster: Cluster) -> None:
    """Deliveries go out from the Celery pool processes (the API only writes the outbox);
    /metrics of the API sums what the workers pushed through PostgreSQL."""
    from prometheus_client.parser import text_string_to_metric_families
    from receiver import Receiver
    from standardwebhooks.webhooks import Webhook as StandardWebhook

    from app.routers.examples import EXPLODING_SPEC

    def scrape() -> dict[str, float]:
        text_ = cluster.http.get("/metrics").text
        return {s.name + str(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(text_) for s in f.samples}

    cluster.ensure_workers(1)
    before = scrape()
    with Receiver(lambda n: 500 if n == 1 else 200) as receiver:
        r = cluster.http.post("/v1/webhooks", json={
            "url": receiver.url, "events": ["diagnosis.exploding", "job.succeeded"]})
        assert r.status_code == 201, r.text
        hook = r.json()
        try:
            job_id = cluster.submit(EXPLODING_SPEC)
            job = cluster.wait_terminal(job_id)
            assert job["verdict"] == "exploding"
            got = receiver.wait_for(
                lambda rs: any(x.status == 200 and x.payload["type"] == "job.succeeded"
                               for x in rs), what="job.succeeded")
        finally:
            cluster.http.delete(f"/v1/webhooks/{hook['id']}")
    delivered = [x for x in got if x.status == 200]
    assert [x.payload["type"] for x in delivered] == ["diagnosis.exploding", "job.succeeded"]
    assert got[0].status == 500 and got[1].headers["webhook-id"] == got[0].headers["webhook-id"]
    for x in got:
        StandardWebhook(hook["secret"]).verify(x.body, x.headers)
    after = scrape()
    steps = "gradwatch_steps_trained_total[]"
    assert after[steps] - before.get(steps, 0.0) == job["progress"]["step"]
    explosions = "gradwatch_explosions_detected_total[]"
    assert after[explosions] - before.get(explosions, 0.0) == 1
