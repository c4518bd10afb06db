"""Request ids on every response and in JSON log lines; /metrics guarded like /v1."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

import pytest
from conftest import SMALL_SPEC
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.correlation import JsonFormatter, bind


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    responses = [client.get("/healthz"), client.get("/v1/jobs/nope"), client.get("/nowhere"),
                 client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}),
                 client.post("/v1/jobs", json=SMALL_SPEC)]
    ids = [r.headers.get("X-Request-ID") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert [r.status_code for r in responses] == [200, 404, 404, 422, 202]


def test_a_given_request_id_is_echoed_and_a_bad_one_replaced(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123:7"}).headers[
        "X-Request-ID"] == "abc-123:7"
    for bad in ("x" * 129, "has space", "quote\"d"):
        got = client.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert got != bad and len(got) == 32


def test_a_job_shows_the_request_id_that_created_it(client: TestClient) -> None:
    r = client.post("/v1/jobs", json=SMALL_SPEC, headers={"X-Request-ID": "deploy-9"})
    assert r.json()["request_id"] == "deploy-9"
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["request_id"] == "deploy-9"
    listed = client.get("/v1/jobs").json()["items"][0]
    assert listed["request_id"] == "deploy-9"


def test_log_lines_are_json_with_the_request_id(client: TestClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gradwatch.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    @client.app.get("/_log")  # type: ignore[attr-defined]
    def _log() -> dict[str, str]:
        logger.info("handling %s", "it")
        return {}

    try:
        client.get("/_log", headers={"X-Request-ID": "trace-1"})
        with bind(request_id="r-2", job_id="job-3"):
            logger.warning("in a worker")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "handling it" and lines[0]["request_id"] == "trace-1"
    assert lines[0]["job_id"] is None and "tenant" in lines[0] and lines[0]["level"] == "info"
    assert lines[1]["request_id"] == "r-2" and lines[1]["job_id"] == "job-3"


def test_metrics_need_the_api_key_when_one_is_set(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="s3cret")
    assert client.get("/metrics").status_code == 401
    r = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"gradwatch_jobs", "gradwatch_queue_depth", "gradwatch_queue_oldest_age_seconds",
            "gradwatch_steps_trained", "gradwatch_webhook_delivery_attempts",
            "gradwatch_http_request_duration_seconds", "gradwatch_db_write_seconds"} <= names


@pytest.mark.parametrize("queued", [0, 2])
def test_queue_depth_and_age_come_from_the_database(client: TestClient, queued: int) -> None:
    for _ in range(queued):
        client.post("/v1/jobs", json=SMALL_SPEC)  # no workers: they stay queued
    samples = {s.name: s.value for f in text_string_to_metric_families(client.get("/metrics").text)
               for s in f.samples if not s.labels}
    assert samples["gradwatch_queue_depth"] == queued
    assert (samples["gradwatch_queue_oldest_age_seconds"] > 0) == (queued > 0)
