"""A sweep on the scale-out setup: `gradwatch serve` + Celery workers, PostgreSQL, Redis.

Members are jobs sent to Celery; the worker that reaches a member first trains its share of
the group batched. Uses the cluster of tests/test_integration.py (its own database).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from conftest import SWEEP_SPEC
from receiver import Receiver
from standardwebhooks.webhooks import Webhook as StandardWebhook
from test_integration import Cluster, cluster  # noqa: F401  (the module-scoped fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_sweep_runs_batched_on_celery_workers_against_postgres(
        cluster: Cluster) -> None:  # noqa: F811
    cluster.ensure_workers(2)
    with Receiver() as receiver:  # the base spec's notify: one delivery for the whole sweep
        r = cluster.http.post("/v1/sweeps", json={
            "spec": {**SWEEP_SPEC, "notify": {"url": receiver.url, "events": ["job.succeeded"]}},
            "axes": [{"path": "model.init.std", "values": [0.3, 2.0]},
                     {"path": "optimizer.lr", "values": [0.001, 0.01, 1.0, 3.0]}]})
        assert r.status_code == 202, r.text
        sweep_id, secret = r.json()["id"], r.json()["notify_secret"]
        deadline = time.monotonic() + 180
        while True:
            sweep = cluster.http.get(f"/v1/sweeps/{sweep_id}").json()
            if sweep["status"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, sweep["progress"]
            time.sleep(0.2)
        receiver.wait_for(lambda rs: len(rs) >= 1, what="the sweep's delivery")
        time.sleep(1.0)  # five delivery polls: a second delivery would have come
        got = list(receiver.received)
    assert sweep["status"] == "succeeded", sweep
    assert [g.payload["type"] for g in got] == ["sweep.succeeded"]
    assert StandardWebhook(secret).verify(got[0].body, got[0].headers)
    assert got[0].payload["data"]["verdicts"] == dict(
        Counter(m["verdict"] for m in sweep["members"]))
    members = sweep["members"]
    assert all(m["verdict"] == "exploding" for m in members[4:])
    rows = [cluster.row(m["job_id"]) for m in members]
    retried = [(r["id"], r["attempts"], r["worker_id"],
                [e for e in cluster.status_events(r["id"]) if e.get("requeued")])
               for r in rows if r["attempts"] != 1]
    assert all(r["parent_sweep_id"] == sweep_id for r in rows)
    assert not retried, retried  # each member trained once (why not, if not: its requeues)
    by_worker: dict[str, int] = {}
    for row in rows:
        by_worker[row["worker_id"]] = by_worker.get(row["worker_id"], 0) + 1
    assert max(by_worker.values()) >= 2  # trained batched: a worker took several members
    for m in members:  # every member's full history is stored, once
        counts = cluster.history_counts(m["job_id"])
        job = cluster.job(m["job_id"])
        assert counts["rows"] == counts["distinct_steps"] == job["progress"]["step"]
    grid = cluster.http.get(f"/v1/sweeps/{sweep_id}/stability").json()
    assert grid["verdict"][1] == ["exploding"] * 4
    png = cluster.http.get(f"/v1/sweeps/{sweep_id}/plots/stability")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
