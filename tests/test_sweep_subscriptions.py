"""Subscriptions (`POST /v1/webhooks`) that list `sweep.*` events: each sweep of the
subscription's tenant (the admin's: of every tenant) reaches it once, when its last member
finished, with the payload of the sweep's own `notify` webhook, signed with the
subscription's secret; another tenant's subscriptions and ones that want other events get
nothing.

End to end: a real server with two local worker processes (SQLite) and tenant keys, a real
HTTP receiver on 127.0.0.1, signatures checked with the Standard Webhooks reference library.
The cancel path (no workers) runs the delivery loop pass by pass, as tests/test_webhooks.py
does. Exactly once under concurrency on PostgreSQL: tests/test_sweep_notify.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SMALL_SPEC, LiveServer, make_settings
from fastapi.testclient import TestClient
from receiver import Receiver, deliver
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.cli import create_key

pytestmark = pytest.mark.timeout(240)

TINY: dict[str, Any] = {**SMALL_SPEC, "training": {"epochs": 1, "batch_size": 60}}
AXES = [{"path": "optimizer.lr", "values": [0.01, 0.1]}]
SWEEP_EVENTS = ["sweep.succeeded", "sweep.failed", "sweep.cancelled"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def subscribe(http: httpx.Client | TestClient, url: str, events: list[str],
              auth: dict[str, str] | None = None) -> dict[str, Any]:
    r = http.post("/v1/webhooks", json={"url": url, "events": events}, headers=auth or {})
    assert r.status_code == 201, r.text
    assert r.json()["events"] == events
    body: dict[str, Any] = r.json()
    return body


def wait_sweep(http: httpx.Client, sweep_id: str, auth: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 150
    while True:
        sweep: dict[str, Any] = http.get(f"/v1/sweeps/{sweep_id}", headers=auth).json()
        if sweep["status"] not in ("queued", "running"):
            return sweep
        assert time.monotonic() < deadline, sweep["progress"]
        time.sleep(0.1)


def test_subscriptions_get_a_sweeps_final_event_once_per_matching_subscription(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=2, api_key="adm", max_job_runtime_seconds=120,
                             webhook_allow_private=True, webhook_backoff_seconds=0.2,
                             webhook_poll_seconds=0.1)
    with LiveServer(settings) as server, Receiver() as receiver:
        http, admin = server.http, bearer("adm")
        a = bearer(create_key(settings, "team-a").key)
        b = bearer(create_key(settings, "team-b").key)
        subs = {  # path -> (subscription, whose key, deliveries of sweep.succeeded expected)
            "a-sweeps": (subscribe(http, f"{receiver.url}/a-sweeps", SWEEP_EVENTS, a), a, 1),
            "a-mixed": (subscribe(http, f"{receiver.url}/a-mixed",
                                  ["job.succeeded", "sweep.succeeded"], a), a, 1),
            "a-failed": (subscribe(http, f"{receiver.url}/a-failed", ["sweep.failed"], a), a, 0),
            "a-jobs": (subscribe(http, f"{receiver.url}/a-jobs", ["job.succeeded"], a), a, 0),
            "b-sweeps": (subscribe(http, f"{receiver.url}/b-sweeps", SWEEP_EVENTS, b), b, 0),
            "admin": (subscribe(http, f"{receiver.url}/admin", ["sweep.succeeded"], admin),
                      admin, 1),
        }
        # team-a's sweep, with its own webhook as well (the payload to compare with)
        r = http.post("/v1/sweeps", headers=a, json={
            "name": "subscribed", "axes": AXES,
            "spec": {**TINY, "notify": {"url": f"{receiver.url}/own",
                                        "events": ["job.succeeded"]}}})
        assert r.status_code == 202, r.text
        sweep_id, own_secret = r.json()["id"], r.json()["notify_secret"]
        sweep = wait_sweep(http, sweep_id, a)
        assert sweep["status"] == "succeeded"
        members = {m["job_id"] for m in sweep["members"]}

        def sweep_events(got: list[Any]) -> list[Any]:
            return [g for g in got if g.payload["type"].startswith("sweep.")]

        receiver.wait_for(lambda got: len(sweep_events(got)) >= 4, what="the sweep events")
        time.sleep(1.5)  # ~15 delivery polls: anything else that was coming has come
        got = list(receiver.received)

        by_path: dict[str, list[Any]] = {}
        for g in got:
            assert g.status == 200
            by_path.setdefault(g.path.removeprefix("/hook/"), []).append(g)
        [own] = by_path.pop("own")
        assert StandardWebhook(own_secret).verify(own.body, own.headers)
        assert own.payload["type"] == "sweep.succeeded"
        for path, (sub, auth, expected) in subs.items():
            received = sweep_events(by_path.get(path, []))
            assert len(received) == expected, (path, [g.payload["type"] for g in received])
            for delivery in received:
                StandardWebhook(sub["secret"]).verify(delivery.body, delivery.headers)
                with pytest.raises(WebhookVerificationError):
                    StandardWebhook(own_secret).verify(delivery.body, delivery.headers)
                assert delivery.payload["type"] == "sweep.succeeded"
                assert delivery.payload["data"] == own.payload["data"]
                assert delivery.payload["data"]["sweep_id"] == sweep_id
            # the delivery log lists it under the subscription, with the sweep
            log = http.get(f"/v1/webhooks/{sub['id']}/deliveries", headers=auth).json()["items"]
            sweep_log = [d for d in log if d["sweep_id"] is not None]
            assert [(d["event"], d["sweep_id"], d["job_id"], d["status"]) for d in sweep_log] \
                == [("sweep.succeeded", sweep_id, None, "succeeded")] * expected
            assert [d["id"] for d in sweep_log] == [g.headers["webhook-id"] for g in received]
        # job events still flow as before (each member once), and nothing went elsewhere
        for path in ("a-mixed", "a-jobs"):
            jobs = [g.payload["data"]["job_id"] for g in by_path.get(path, [])
                    if g.payload["type"] == "job.succeeded"]
            assert sorted(jobs) == sorted(members), path
        assert not by_path.get("b-sweeps") and not by_path.get("a-failed")
        assert set(by_path) <= set(subs)


def test_cancelling_a_sweep_without_notify_sends_sweep_cancelled_to_subscriptions(
        make_client: Callable[..., TestClient]) -> None:
    """No `notify`: the subscription alone makes the cancel take the sweep's lock and send
    `sweep.cancelled` (from the API process), once."""
    client = make_client(webhook_allow_private=True)
    with Receiver() as receiver:
        sub = subscribe(client, receiver.url, ["sweep.cancelled", "job.cancelled"])
        r = client.post("/v1/sweeps", json={"spec": TINY, "axes": AXES})
        assert r.status_code == 202, r.text
        sweep_id = r.json()["id"]
        assert client.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 202
        deliver(client, receiver, 3)  # two job.cancelled, one sweep.cancelled
    types = sorted(g.payload["type"] for g in receiver.received)
    assert types == ["job.cancelled", "job.cancelled", "sweep.cancelled"]
    [got] = [g for g in receiver.received if g.payload["type"] == "sweep.cancelled"]
    assert StandardWebhook(sub["secret"]).verify(got.body, got.headers)
    assert got.payload["data"]["sweep_id"] == sweep_id
    assert got.payload["data"]["status"] == "cancelled"


def test_sweep_events_are_accepted_and_unknown_ones_are_a_422_naming_them(
        client: TestClient) -> None:
    made = subscribe(client, "https://hooks.example.com/s", ["sweep.failed", "job.failed"])
    assert client.get(f"/v1/webhooks/{made['id']}").json()["events"] == [
        "sweep.failed", "job.failed"]
    r = client.post("/v1/webhooks", json={"url": "https://hooks.example.com/s",
                                          "events": ["sweep.finished"]})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    [error] = r.json()["errors"]
    assert error["loc"] == ["body", "events", 0]
    assert "'sweep.succeeded'" in error["msg"] and "'job.succeeded'" in error["msg"]
