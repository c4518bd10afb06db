"""A sweep's `notify`: one webhook for the sweep, one delivery when its last member finishes.

End to end: a real server with two local worker processes (SQLite), a real HTTP receiver on
127.0.0.1, signatures checked with the Standard Webhooks reference library. The cancel path
runs the delivery loop pass by pass (as tests/test_webhooks.py does). Exactly once under
concurrency: two PostgreSQL transactions finish the last two members at the same time.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import SMALL_SPEC, LiveServer, PgStore, make_settings
from fastapi.testclient import TestClient
from receiver import Receiver, deliver
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook as StandardWebhook

from app.db import unit_of_work
from app.lifecycle import TERMINAL, move_job
from app.models import Job, Webhook, WebhookDelivery
from app.sweep_notify import FINISHED
from app.sweeps import SweepCreate, cancel_sweep, create_sweep
from app.tenancy import ADMIN
from app.webhooks import WebhookRepository
from core.sweep import SweepAxis

pytestmark = pytest.mark.timeout(240)

TINY: dict[str, Any] = {**SMALL_SPEC, "training": {"epochs": 1, "batch_size": 60}}
AXES = [{"path": "model.init.std", "values": [0.3]},
        {"path": "optimizer.lr", "values": [0.01, 0.1]}]
ALL_EVENTS = ["job.succeeded", "job.failed", "job.cancelled", "diagnosis.exploding",
              "diagnosis.final"]
SWEEP_EVENTS = ["sweep.succeeded", "sweep.failed", "sweep.cancelled"]


def notifying(url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "notify me", "spec": {**TINY, "notify": {"url": url,
                                                            "events": events or ALL_EVENTS}},
            "axes": AXES, **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("sweep-notify"), workers=2,
                             max_job_runtime_seconds=120, webhook_allow_private=True,
                             webhook_backoff_seconds=0.2, webhook_poll_seconds=0.1)
    with LiveServer(settings) as live:
        yield live




def test_a_sweep_with_notify_delivers_once_signed_with_the_secret_of_its_202(
        server: LiveServer) -> None:
    with Receiver() as receiver:
        r = server.http.post("/v1/sweeps", json=notifying(receiver.url),
                             headers={"Idempotency-Key": "notify-once"})
        assert r.status_code == 202, r.text
        created = r.json()
        sweep_id, secret = created["id"], created["notify_secret"]
        assert secret.startswith("whsec_")
        assert created["links"]["webhook"] == f"/v1/webhooks/{sweep_id}"
        # the replay answers the same sweep without the secret
        again = server.http.post("/v1/sweeps", json=notifying(receiver.url),
                                 headers={"Idempotency-Key": "notify-once"})
        assert again.status_code == 200 and again.json()["id"] == sweep_id
        assert again.json()["notify_secret"] is None

        sweep = server.wait_sweep(sweep_id)
        got = receiver.wait_for(lambda rs: len(rs) >= 1, what="the sweep's delivery")
        time.sleep(1.5)  # ~15 delivery polls: anything else that was coming has come
        got = list(receiver.received)

    assert [g.payload["type"] for g in got] == [f"sweep.{sweep['status']}"], \
        [(g.payload["type"], g.payload["data"].get("job_id")) for g in got]
    [delivery] = got
    assert StandardWebhook(secret).verify(delivery.body, delivery.headers)
    data = delivery.payload["data"]
    assert data["sweep_id"] == sweep_id and data["name"] == "notify me"
    assert data["status"] == sweep["status"] and "job_id" not in data
    assert data["progress"] == {**sweep["progress"], "members_done": 2, "members": 2}
    assert data["verdicts"] == dict(Counter(m["verdict"] for m in sweep["members"]))
    assert data["links"]["self"] == f"/v1/sweeps/{sweep_id}"
    assert data["links"]["stability"] == f"/v1/sweeps/{sweep_id}/stability"
    # the recommendation is the one GET .../stability gives over the default axes
    grid = server.http.get(f"/v1/sweeps/{sweep_id}/stability").json()
    assert data["stability_axes"]["x"] == grid["x"] == "optimizer.lr"
    assert data["stability_axes"]["y"] == grid["y"] == "model.init.std"
    assert data["recommended"] == grid["recommended"]
    assert data["recommended_reason"] == grid["recommended_reason"]
    assert isinstance(data["recommended_reason"], str) and data["recommended_reason"]

    # the sweep's webhook is shown as a job's own is: by id, not in the list
    hook = server.http.get(f"/v1/webhooks/{sweep_id}").json()
    assert hook["sweep_id"] == sweep_id and hook["job_id"] is None
    assert hook["events"] == SWEEP_EVENTS and hook["url"] == receiver.url
    assert sweep_id not in [w["id"] for w in server.http.get("/v1/webhooks").json()]
    [recorded] = server.http.get(f"/v1/webhooks/{sweep_id}/deliveries").json()["items"]
    assert recorded["status"] == "succeeded" and recorded["sweep_id"] == sweep_id
    assert recorded["id"] == delivery.headers["webhook-id"] and recorded["job_id"] is None
    # the members have no webhook of their own and no `notify`
    for m in sweep["members"]:
        assert server.http.get(f"/v1/webhooks/{m['job_id']}").status_code == 404
        job = server.http.get(f"/v1/jobs/{m['job_id']}").json()
        assert job["spec"]["notify"] is None and "webhook" not in job["links"]
    assert server.http.get(f"/v1/sweeps/{sweep_id}").json()["spec"]["notify"]["url"] \
        == receiver.url

    # deleting the sweep deletes its webhook and its deliveries
    assert server.http.delete(f"/v1/sweeps/{sweep_id}").status_code == 204
    assert server.http.get(f"/v1/webhooks/{sweep_id}").status_code == 404
    with server.app.state.sessionmaker() as session:
        assert session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.sweep_id == sweep_id)).all() == []


def test_a_sweep_sends_only_the_final_statuses_its_notify_asks_for(server: LiveServer) -> None:
    with Receiver() as receiver:
        r = server.http.post("/v1/sweeps", json=notifying(receiver.url, ["job.failed"]))
        assert r.status_code == 202, r.text
        sweep_id = r.json()["id"]
        assert server.http.get(f"/v1/webhooks/{sweep_id}").json()["events"] == ["sweep.failed"]
        assert server.wait_sweep(sweep_id)["status"] == "succeeded"
        time.sleep(1.0)
        assert receiver.received == []
    assert server.http.get(f"/v1/webhooks/{sweep_id}/deliveries").json()["items"] == []


@pytest.mark.parametrize("notify, field", [
    ({"url": "http://169.254.169.254/latest", "events": ["job.failed"]}, "url"),
    ({"url": "http://10.0.0.7/hook"}, "url"),
    ({"url": "https://hooks.example.com/gw", "events": ["diagnosis.final"]}, "events"),
])
def test_a_refused_sweep_notify_is_a_422_naming_the_field_and_creates_nothing(
        client: TestClient, notify: dict[str, Any], field: str) -> None:
    r = client.post("/v1/sweeps", json={"spec": {**TINY, "notify": notify}, "axes": AXES})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["loc"] == ["body", "spec", "notify", field]
    assert client.get("/v1/sweeps").json()["items"] == []
    assert client.get("/v1/jobs").json()["items"] == []
    with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(Webhook)).all() == []


def test_cancelling_a_queued_sweep_sends_sweep_cancelled_once(
        make_client: Callable[..., TestClient]) -> None:
    """Cancelling moves every queued member in one transaction: the last move sends it."""
    client = make_client(webhook_allow_private=True)
    with Receiver() as receiver:
        r = client.post("/v1/sweeps", json=notifying(receiver.url))
        assert r.status_code == 202, r.text
        sweep_id = r.json()["id"]
        assert client.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 202
        deliver(client, receiver, 1)
    [got] = receiver.received
    assert got.payload["type"] == "sweep.cancelled"
    data = got.payload["data"]
    assert data["status"] == "cancelled" and data["verdicts"] == {}
    assert data["recommended"] is None
    assert data["recommended_reason"] == "no member finished with a diagnosis"


def test_finished_statuses_are_the_lifecycles_terminal_ones() -> None:
    assert set(FINISHED) == TERMINAL


@pytest.mark.parametrize("own_webhook", [True, False], ids=["notify", "subscriptions-only"])
def test_the_last_two_members_finished_concurrently_on_postgres_deliver_once(
        pg_store: PgStore, own_webhook: bool) -> None:
    """Two transactions finish the two members at the same time; each waits, before its
    commit, until the other has also counted the unfinished members (or 3 s). Without the
    lock on the sweep both count one unfinished member and neither sends; with it the
    second waits for the first's commit, counts none and sends: one delivery per listener —
    the sweep's own webhook (if it has `notify`) and the admin's subscription to
    `sweep.succeeded` (also when that subscription alone makes the sweep take the lock);
    none to another tenant's subscription or to one that wants other events."""
    settings, factory = pg_store.settings, pg_store.factory
    notify = {"notify": {"url": "https://hooks.example.com/s", "events": ["job.succeeded"]}}
    with unit_of_work(factory) as session:
        hooks = WebhookRepository(session)
        wanted = hooks.create(url="https://hooks.example.com/a", tenant=None,
                              events=["job.failed", "sweep.succeeded"]).id
        for tenant, events in (("team-b", SWEEP_EVENTS), (None, ["sweep.failed"])):
            hooks.create(url="https://hooks.example.com/x", events=events, tenant=tenant)
        sweep, job_ids = create_sweep(
            session, settings=settings, principal=ADMIN,
            body=SweepCreate(name="race", axes=[SweepAxis(path="seed", values=[0, 1])],
                             spec={**TINY, **(notify if own_webhook else {})}))
        sweep_id = sweep.id
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(status="running"))

    both_counted = threading.Barrier(2)
    waited: list[bool] = []

    def before_commit(session: Session) -> None:
        try:
            both_counted.wait(timeout=3)
            waited.append(True)
        except threading.BrokenBarrierError:
            waited.append(False)

    event.listen(factory, "before_commit", before_commit)
    errors: list[BaseException] = []

    def finish(job_id: str) -> None:
        try:
            with unit_of_work(factory) as session:
                assert move_job(session, job_id, "succeeded", expect=["running"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(j,)) for j in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    event.remove(factory, "before_commit", before_commit)
    assert not errors, errors
    # the lock kept the second transaction from counting before the first committed
    assert waited == [False, False]
    with factory() as session:
        rows = session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.sweep_id == sweep_id)).all()
        statuses = set(session.scalars(select(Job.status).where(Job.id.in_(job_ids))))
    assert statuses == {"succeeded"}
    assert sorted((d.event, d.webhook_id, d.job_id) for d in rows) == sorted(
        [("sweep.succeeded", wanted, None)]
        + ([("sweep.succeeded", sweep_id, None)] if own_webhook else []))
    bodies = [json.loads(d.payload) for d in rows]  # the same event, the same data
    assert len({(b["type"], json.dumps(b["data"], sort_keys=True)) for b in bodies}) == 1


def test_cancelling_a_sweep_while_a_worker_finishes_a_member_neither_deadlocks_nor_repeats(
        pg_store: PgStore) -> None:
    """The cancel takes the sweep's lock, then pauses; meanwhile a worker finishes the
    running member 1; then the cancel moves the queued member 0 and flags member 1. Every
    transaction takes the sweep before any member's row, so the worker waits for the cancel.
    (Were the sweep locked after the member's UPDATE, the worker would hold member 1's row
    while waiting for the sweep, and the cancel would wait for that row: a deadlock.)"""
    settings, engine, factory = pg_store.settings, pg_store.engine, pg_store.factory
    with unit_of_work(factory) as session:
        sweep, job_ids = create_sweep(
            session, settings=settings, principal=ADMIN,
            body=SweepCreate(name="cancel race", axes=[SweepAxis(path="seed", values=[0, 1])],
                             spec={**TINY, "notify": {"url": "https://hooks.example.com/s"}}))
        sweep_id = sweep.id
        session.execute(update(Job).where(Job.id == job_ids[1]).values(status="running"))

    locked, errors = threading.Event(), []
    canceller: list[int] = []

    def after_lock(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (threading.get_ident() in canceller and "FOR NO KEY UPDATE" in statement
                and not locked.is_set()):
            locked.set()
            time.sleep(0.5)  # the worker now tries to finish member 1

    def cancel() -> None:
        canceller.append(threading.get_ident())
        try:
            with unit_of_work(factory) as session:
                cancel_sweep(session, sweep_id, ADMIN)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def finish() -> None:
        locked.wait(timeout=10)
        try:
            with unit_of_work(factory) as session:
                move_job(session, job_ids[1], "succeeded", expect=["running"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    event.listen(engine, "after_cursor_execute", after_lock)
    threads = [threading.Thread(target=cancel), threading.Thread(target=finish)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    event.remove(engine, "after_cursor_execute", after_lock)
    assert locked.is_set() and not errors, errors
    with factory() as session:
        statuses = [session.get(Job, j).status for j in job_ids]  # type: ignore[union-attr]
        rows = session.scalars(select(WebhookDelivery).where(
            WebhookDelivery.sweep_id == sweep_id)).all()
    assert statuses == ["cancelled", "succeeded"]
    assert [d.event for d in rows] == ["sweep.cancelled"]
