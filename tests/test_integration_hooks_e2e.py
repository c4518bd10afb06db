"""Other services' view, end to end: a real server with real worker processes, a real HTTP
receiver on 127.0.0.1 in this process, ``/metrics`` parsed with prometheus_client's parser.

The server allows private destinations (the receiver is on loopback); the refusal of such
destinations is tested in tests/test_webhooks.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SMALL_SPEC, LiveServer, make_settings
from prometheus_client.parser import text_string_to_metric_families
from receiver import Received, Receiver
from standardwebhooks.webhooks import Webhook as StandardWebhook

from app.routers.examples import EXPLODING_SPEC

pytestmark = pytest.mark.timeout(240)

ALL_EVENTS = ["job.succeeded", "job.failed", "job.cancelled", "diagnosis.exploding",
              "diagnosis.final"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("hooks"), workers=1,
                             max_job_runtime_seconds=120, webhook_allow_private=True,
                             webhook_backoff_seconds=0.2, webhook_poll_seconds=0.1)
    with LiveServer(settings) as live:
        yield live


def scrape(live: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = live.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def subscribe(live: LiveServer, url: str, events: list[str]) -> dict[str, Any]:
    r = live.http.post("/v1/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    hook: dict[str, Any] = r.json()
    return hook


def types(received: list[Received]) -> list[str]:
    return [r.payload["type"] for r in received]


def test_an_exploding_job_notifies_diagnosis_exploding_before_job_succeeded(
        server: LiveServer) -> None:
    with Receiver() as receiver:
        hook = subscribe(server, receiver.url, ALL_EVENTS)
        try:
            job_id = server.http.post("/v1/jobs", json=EXPLODING_SPEC).json()["id"]
            job = server.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
            assert job["status"] == "succeeded" and job["verdict"] == "exploding"
            got = receiver.wait_for(
                lambda rs: "job.succeeded" in types([r for r in rs if r.payload["data"]
                                                     ["job_id"] == job_id]),
                what="job.succeeded")
        finally:
            server.http.delete(f"/v1/webhooks/{hook['id']}")
    mine = [r for r in got if r.payload["data"]["job_id"] == job_id]
    assert types(mine) == ["diagnosis.exploding", "diagnosis.final", "job.succeeded"]
    for r in mine:
        StandardWebhook(hook["secret"]).verify(r.body, r.headers)
    exploding = mine[0].payload["data"]["diagnosis"]
    assert exploding["verdict"] == "exploding" and exploding["final"] is False
    assert isinstance(exploding["first_bad_step"], int)
    final = mine[1].payload["data"]["diagnosis"]
    assert final["verdict"] == "exploding" and final["final"] is True
    assert final["top_recommendation"]["spec_patch"]  # a machine-applicable fix
    done = mine[2].payload["data"]
    assert done["status"] == "succeeded" and done["stop_reason"] == job["stop_reason"]
    assert done["request_id"] == job["request_id"] is not None


def test_a_job_notification_is_retried_after_the_receiver_fails_twice(server: LiveServer) -> None:
    with Receiver(lambda n: 500 if n <= 2 else 200) as receiver:
        hook = subscribe(server, receiver.url, ["job.succeeded"])
        try:
            job_id = server.http.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
            receiver.wait_for(lambda rs: any(r.status == 200 for r in rs), what="a 200")
        finally:
            server.http.delete(f"/v1/webhooks/{hook['id']}")
        got = receiver.of(job_id)
    assert [r.status for r in got] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in got}) == 1
    stamps = [int(r.headers["webhook-timestamp"]) for r in got]
    assert stamps == sorted(stamps)
    for r in got:  # every attempt is signed afresh for its own timestamp
        assert StandardWebhook(hook["secret"]).verify(r.body, r.headers)["type"] == "job.succeeded"


def test_metrics_counters_move_as_jobs_run(server: LiveServer) -> None:
    before = scrape(server)
    job_id = server.http.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    job = server.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert job["status"] == "succeeded"
    server.http.get(f"/v1/jobs/{job_id}")
    after = scrape(server)
    steps = job["progress"]["total_steps"]
    assert (value(after, "gradwatch_steps_trained_total")
            - value(before, "gradwatch_steps_trained_total")) == steps
    layers = 3  # two hidden layers and the output layer
    assert (value(after, "gradwatch_layer_records_stored_total")
            - value(before, "gradwatch_layer_records_stored_total")) == steps * layers
    assert (value(after, "gradwatch_jobs", status="succeeded")
            == value(before, "gradwatch_jobs", status="succeeded") + 1)
    assert value(after, "gradwatch_queue_depth") >= 0
    assert value(after, "gradwatch_db_write_seconds_count") > value(
        before, "gradwatch_db_write_seconds_count")
    # latency by route template, never by raw path
    routes = {dict(labels).get("route") for (name, labels) in after
              if name == "gradwatch_http_request_duration_seconds_count"}
    assert "/v1/jobs/{job_id}" in routes and not any(job_id in (r or "") for r in routes)


def test_an_explosion_and_webhook_outcomes_show_in_metrics(server: LiveServer) -> None:
    before = scrape(server)
    with Receiver(lambda n: 500 if n == 1 else 200) as receiver:
        hook = subscribe(server, receiver.url, ["diagnosis.exploding"])
        try:
            job_id = server.http.post("/v1/jobs", json=EXPLODING_SPEC).json()["id"]
            server.wait_for(job_id, {"succeeded"}, timeout=120)
            receiver.wait_for(lambda rs: any(r.status == 200 for r in rs), what="a 200")
        finally:
            server.http.delete(f"/v1/webhooks/{hook['id']}")
    deadline = time.monotonic() + 30
    while True:  # the attempt is recorded just after the receiver answered
        after = scrape(server)
        moved = value(after, "gradwatch_webhook_delivery_attempts_total", outcome="delivered") - \
            value(before, "gradwatch_webhook_delivery_attempts_total", outcome="delivered")
        if moved >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert moved == 1
    assert (value(after, "gradwatch_webhook_delivery_attempts_total", outcome="retrying")
            - value(before, "gradwatch_webhook_delivery_attempts_total", outcome="retrying")) == 1
    assert (value(after, "gradwatch_explosions_detected_total")
            - value(before, "gradwatch_explosions_detected_total")) == 1
    assert value(after, "gradwatch_jobs_by_verdict", status="succeeded", verdict="exploding") >= 1
    job = server.http.get(f"/v1/jobs/{job_id}").json()
    if job["stop_reason"] in ("explosion", "non_finite"):
        assert (value(after, "gradwatch_monitor_stops_total", reason=job["stop_reason"])
                - value(before, "gradwatch_monitor_stops_total", reason=job["stop_reason"])) == 1


def test_a_job_records_the_request_id_that_created_it(server: LiveServer) -> None:
    r = server.http.post("/v1/jobs", json=SMALL_SPEC, headers={"X-Request-ID": "ci-run-42.7"})
    assert r.status_code == 202 and r.headers["X-Request-ID"] == "ci-run-42.7"
    job_id = r.json()["id"]
    assert r.json()["request_id"] == "ci-run-42.7"
    got = server.http.get(f"/v1/jobs/{job_id}")
    assert got.json()["request_id"] == "ci-run-42.7"
    assert got.headers["X-Request-ID"] not in ("", "ci-run-42.7")  # each request has its own
    server.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)


def test_a_spec_with_notify_gets_its_own_signed_webhook(server: LiveServer) -> None:
    with Receiver() as receiver:
        spec = {**SMALL_SPEC, "notify": {"url": receiver.url, "events": ["job.succeeded"]}}
        r = server.http.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        created = r.json()
        secret = created["notify_secret"]
        assert secret.startswith("whsec_")
        assert created["spec"]["notify"] == {"url": receiver.url, "events": ["job.succeeded"]}
        job_id = created["id"]
        [delivery] = receiver.wait_for(lambda rs: len(rs) >= 1, what="the job's delivery")
    assert StandardWebhook(secret).verify(delivery.body, delivery.headers)["data"][
        "job_id"] == job_id
    job = server.http.get(f"/v1/jobs/{job_id}").json()
    assert job["notify_secret"] is None  # shown once
    records = server.http.get(job["links"]["webhook"] + "/deliveries").json()["items"]
    assert [d["event"] for d in records] == ["job.succeeded"]
