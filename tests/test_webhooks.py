"""Webhooks without training: subscriptions over HTTP, destination checks, signatures checked
with the Standard Webhooks reference library, and the delivery loop against a real receiver.

A queued job that is cancelled emits ``job.cancelled`` from the API process; the tests then
run a :class:`app.delivery.DeliveryLoop` pass by pass (the same loop worker processes run
in a thread) so every retry is observable.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SMALL_SPEC
from fastapi.testclient import TestClient
from receiver import Receiver
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.delivery import DeliveryLoop
from app.webhooks import DestinationRefused, check_destination, new_secret, sign


def loop_for(client: TestClient) -> DeliveryLoop:
    state: Any = client.app.state  # type: ignore[attr-defined]
    return DeliveryLoop(state.settings, state.sessionmaker)


def subscribe(client: TestClient, url: str, events: list[str]) -> dict[str, Any]:
    r = client.post("/v1/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def cancelled_job(client: TestClient) -> str:
    job_id: str = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    return job_id


def deliveries(client: TestClient, webhook_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def run_until(loop: DeliveryLoop, done: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the deliveries did not settle"
        loop.run_once()
        time.sleep(0.02)


# ---------------------------------------------------------------- signatures


def test_signatures_verify_with_the_standard_webhooks_reference_library() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = b'{"type":"job.succeeded","data":{"job_id":"x"}}'
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "msg_1", now, body)}
    assert StandardWebhook(secret).verify(body, headers)["type"] == "job.succeeded"
    tampered = body.replace(b"succeeded", b"failed")
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(secret).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(new_secret()).verify(body, headers)


# ---------------------------------------------------------------- destinations


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/hook", "http:// or https://"),
    ("https://user:pw@example.com/hook", "user name or password"),
    ("http://127.0.0.1:9000/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("https:///hook", "no host"),
])
def test_unsafe_destinations_are_refused(url: str, reason: str) -> None:
    with pytest.raises(DestinationRefused, match=reason):
        check_destination(url, allow_private=False)


def test_private_destinations_are_allowed_only_by_setting() -> None:
    assert check_destination("http://127.0.0.1:9000/h", allow_private=True)
    assert check_destination("https://hooks.example.com/gradwatch", allow_private=False)
    with pytest.raises(DestinationRefused):  # credentials never, whatever the setting
        check_destination("http://u:p@127.0.0.1/h", allow_private=True)


# ---------------------------------------------------------------- the API


def test_a_subscription_shows_its_secret_once(client: TestClient) -> None:
    created = subscribe(client, "https://hooks.example.com/gw", ["job.succeeded", "job.failed"])
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["job.succeeded", "job.failed"]
    got = client.get(f"/v1/webhooks/{created['id']}").json()
    assert got["url"] == "https://hooks.example.com/gw" and "secret" not in got
    assert [w["id"] for w in client.get("/v1/webhooks").json()] == [created["id"]]
    assert client.delete(f"/v1/webhooks/{created['id']}").status_code == 204
    assert client.get(f"/v1/webhooks/{created['id']}").status_code == 404
    assert client.get(f"/v1/webhooks/{created['id']}/deliveries").status_code == 404


@pytest.mark.parametrize("body, where", [
    ({"url": "http://127.0.0.1:8000/h", "events": ["job.failed"]}, "url"),
    ({"url": "https://hooks.example.com/h", "events": ["job.exploded"]}, "events"),
    ({"url": "https://hooks.example.com/h", "events": []}, "events"),
    ({"url": "https://hooks.example.com/h"}, "events"),
])
def test_bad_subscriptions_are_422_problems_naming_the_field(
        client: TestClient, body: dict[str, Any], where: str) -> None:
    r = client.post("/v1/webhooks", json=body)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(where in e["loc"] for e in r.json()["errors"]), r.json()


# ---------------------------------------------------------------- delivery


def test_a_delivery_is_signed_and_retried_until_the_receiver_accepts_it(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(webhook_allow_private=True, webhook_backoff_seconds=0.01)
    with Receiver(lambda n: 500 if n <= 2 else 204) as receiver:
        hook = subscribe(client, receiver.url, ["job.cancelled"])
        job_id = cancelled_job(client)
        loop = loop_for(client)
        try:
            run_until(loop, lambda: deliveries(client, hook["id"])[0]["status"] != "pending")
        finally:
            loop.stop()
        got = receiver.of(job_id)
    assert [r.status for r in got] == [500, 500, 204]
    assert len({r.headers["webhook-id"] for r in got}) == 1  # one message, three attempts
    assert len({r.body for r in got}) == 1  # the same bytes every time
    for r in got:
        assert StandardWebhook(hook["secret"]).verify(r.body, r.headers)["type"] == "job.cancelled"
    payload = got[0].payload
    assert payload["data"]["job_id"] == job_id and payload["data"]["status"] == "cancelled"
    [delivery] = deliveries(client, hook["id"])
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3
    assert delivery["id"] == got[0].headers["webhook-id"]
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 204]


def test_a_delivery_gives_up_after_the_attempt_limit(make_client: Callable[..., TestClient]) -> None:
    client = make_client(webhook_allow_private=True, webhook_backoff_seconds=0.01,
                         webhook_max_attempts=3)
    with Receiver(lambda n: 503) as receiver:
        hook = subscribe(client, receiver.url, ["job.cancelled"])
        job_id = cancelled_job(client)
        loop = loop_for(client)
        try:
            run_until(loop, lambda: deliveries(client, hook["id"])[0]["status"] != "pending")
            for _ in range(3):  # nothing more is sent after the last attempt
                loop.run_once()
        finally:
            loop.stop()
        assert len(receiver.of(job_id)) == 3
    [delivery] = deliveries(client, hook["id"])
    assert delivery["status"] == "failed" and delivery["last_status_code"] == 503


def _name_resolving_to_this_host() -> str:
    name = socket.gethostname()
    try:
        address = socket.getaddrinfo(name, 80)[0][4][0]
    except OSError:
        pytest.skip(f"the host name {name!r} does not resolve here")
    import ipaddress

    if not (ipaddress.ip_address(address).is_private or ipaddress.ip_address(address).is_loopback):
        pytest.skip(f"{name!r} resolves to the public address {address}")
    return name


def test_a_host_name_that_resolves_to_a_private_address_never_receives(
        make_client: Callable[..., TestClient]) -> None:
    """The address is checked at delivery time, not only when subscribing: a name accepted
    then (it might have pointed anywhere) gets nothing when it resolves privately."""
    client = make_client(webhook_backoff_seconds=0.01)
    with Receiver() as receiver:
        url = f"http://{_name_resolving_to_this_host()}:{receiver.port}/hook"
        hook = subscribe(client, url, ["job.cancelled"])  # a name: accepted at subscription
        cancelled_job(client)
        loop = loop_for(client)
        try:
            run_until(loop, lambda: deliveries(client, hook["id"])[0]["status"] != "pending")
        finally:
            loop.stop()
        time.sleep(0.2)
        assert receiver.received == []
    [delivery] = deliveries(client, hook["id"])
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert "destination refused" in delivery["last_error"]
    assert "private" in delivery["last_error"] or "loopback" in delivery["last_error"]


def test_only_subscribed_events_are_delivered(make_client: Callable[..., TestClient]) -> None:
    client = make_client(webhook_allow_private=True)
    with Receiver() as receiver:
        wants = subscribe(client, receiver.url, ["job.cancelled"])
        ignores = subscribe(client, receiver.url + "?other", ["job.succeeded"])
        cancelled_job(client)
        loop = loop_for(client)
        try:
            run_until(loop, lambda: deliveries(client, wants["id"])[0]["status"] != "pending")
        finally:
            loop.stop()
        assert [r.path for r in receiver.received] == ["/hook"]
    assert deliveries(client, ignores["id"]) == []


def test_a_spec_whose_notify_url_is_refused_is_a_422(client: TestClient) -> None:
    spec = {**SMALL_SPEC, "notify": {"url": "http://169.254.169.254/", "events": ["job.failed"]}}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "notify", "url"]
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was created


def test_the_readme_verification_snippet_accepts_ours_and_rejects_tampering() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "def verify(secret" in block]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    secret, body, now = new_secret(), b'{"type":"job.failed"}', int(time.time())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "msg_2", now, body)}
    assert namespace["verify"](secret, headers, body)
    assert not namespace["verify"](secret, headers, body + b" ")
    assert not namespace["verify"](new_secret(), headers, body)
    old = {**headers, "webhook-timestamp": str(now - 3600),
           "webhook-signature": sign(secret, "msg_2", now - 3600, body)}
    assert not namespace["verify"](secret, old, body)


def test_a_confirmed_explosion_is_counted_and_announced_once_per_job(
        make_client: Callable[..., TestClient]) -> None:
    from app import counters
    from app.db import unit_of_work
    from app.repositories import EventRepository
    from app.webhooks import monitor_alert

    client = make_client()
    hook = subscribe(client, "https://hooks.example.com/gw", ["diagnosis.exploding"])
    job_id = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    alerts = [{"kind": "gradient_growth", "severity": "warning", "step": 3, "layers": [1]},
              {"kind": "gradient_explosion", "severity": "critical", "step": 9, "layers": [2],
               "message": "runaway growth"},
              {"kind": "non_finite", "severity": "critical", "step": 12, "layers": []}]
    for alert in alerts:  # as the sink stores them: the event, then the hook
        with unit_of_work(factory) as session:
            EventRepository(session).append(job_id, "alert", alert)
            monitor_alert(session, job_id, alert)
    with factory() as session:
        assert counters.totals(session)[(counters.EXPLOSIONS_DETECTED, "")] == 1
    [delivery] = deliveries(client, hook["id"])
    assert delivery["event"] == "diagnosis.exploding"
    diagnosis = delivery["payload"]["data"]["diagnosis"]
    assert (diagnosis["first_bad_step"], diagnosis["layer"]) == (9, 2)
