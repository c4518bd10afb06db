"""Request ids on every response and in JSON log lines (with the request's tenant, in sync
dependencies and endpoints too); /metrics guarded like /v1."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SMALL_SPEC, make_settings, served
from fastapi import APIRouter, Depends, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from app.cli import create_key
from app.correlation import HEADER, JsonFormatter, RequestIdMiddleware, bind, set_request_tenant
from app.deps import PrincipalDep, require_api_key
from app.main import create_app


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


def _json_lines(*loggers: str) -> tuple[io.StringIO, Callable[[], None]]:
    """Lines of these loggers as `gradwatch serve` writes them, and how to stop collecting."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for name in loggers:
        logging.getLogger(name).addHandler(handler)

    def stop() -> None:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)
    return stream, stop


def test_lines_of_sync_dependencies_and_endpoints_name_the_tenant_of_their_request(
        tmp_path: Path) -> None:
    """A real server; one keep-alive connection; a tenant's request, then the admin's, another
    tenant's, a refused one and an unauthenticated route: each line names its own request's
    tenant (never the previous one's) and request id."""
    admin = "admin-key-for-correlation-tests"
    settings = make_settings(tmp_path, api_key=admin)
    application = create_app(settings)
    logger = logging.getLogger("gradwatch.test.tenant")
    logger.setLevel(logging.INFO)

    def checking(request: Request) -> None:  # a sync dependency: runs in a worker thread
        logger.info("dependency of %s", request.url.path)

    router = APIRouter(dependencies=[Depends(require_api_key)])  # as app.main's routers

    @router.get("/v1/_log_tenant", dependencies=[Depends(checking)])
    def log_tenant(principal: PrincipalDep) -> dict[str, Any]:
        logger.info("endpoint for %s", principal.tenant)  # a sync endpoint: a worker thread
        return {"tenant": principal.tenant}

    application.include_router(router)
    stream, stop = _json_lines("gradwatch.test.tenant", "uvicorn.access")
    try:
        with served(application, log_config=None, log_level="info", access_log=True) as url, \
                httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1)) as http:
            # keys once the server has migrated the database
            vision = create_key(settings, "team-vision")
            audio = create_key(settings, "team-audio")
            requests = [("t-vision", "/v1/_log_tenant", vision.key, 200),
                        ("t-admin", "/v1/_log_tenant", admin, 200),
                        ("t-audio", "/v1/_log_tenant", audio.key, 200),
                        ("t-nokey", "/v1/_log_tenant", None, 401),
                        ("t-health", "/healthz", None, 200)]
            for request_id, path, key, status in requests:
                headers = {"X-Request-ID": request_id}
                if key is not None:
                    headers["Authorization"] = f"Bearer {key}"
                assert http.get(path, headers=headers).status_code == status
    finally:
        stop()
    lines: list[dict[str, Any]] = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert [line["request_id"] for line in access] == [r[0] for r in requests], lines
    # one connection served them all (keep-alive): the same client address and port
    assert len({line["message"].split(" - ")[0] for line in access}) == 1, access
    ours = [(line["request_id"], line["message"], line["tenant"]) for line in lines
            if line["logger"] == "gradwatch.test.tenant"]
    assert ours == [
        ("t-vision", "dependency of /v1/_log_tenant", "team-vision"),
        ("t-vision", "endpoint for team-vision", "team-vision"),
        ("t-admin", "dependency of /v1/_log_tenant", None),
        ("t-admin", "endpoint for None", None),
        ("t-audio", "dependency of /v1/_log_tenant", "team-audio"),
        ("t-audio", "endpoint for team-audio", "team-audio")], lines
    assert [line["tenant"] for line in access] == ["team-vision", None, "team-audio", None,
                                                   None]


def test_the_middleware_starts_each_request_without_a_tenant_and_resets_it_at_the_end() -> None:
    """Requests served one after another in one task (one context) do not pass a tenant on."""
    formatter = JsonFormatter()

    def tenant_now() -> Any:
        return json.loads(formatter.format(logging.makeLogRecord({"msg": "x"})))["tenant"]

    seen: list[Any] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        seen.append(tenant_now())
        if scope["path"] == "/tenant":
            set_request_tenant("acme")
            seen.append(tenant_now())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def serve_in_one_task() -> list[Any]:
        middleware = RequestIdMiddleware(endpoint)
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        after = []
        for path in ("/tenant", "/other", "/tenant"):
            await middleware({"type": "http", "path": path, "headers": []}, receive, send)
            after.append(tenant_now())
        return after

    with bind(tenant="outer"):  # e.g. a worker's binding: not the request's tenant
        after = asyncio.run(serve_in_one_task())
    assert seen == [None, "acme", None, None, "acme"]  # never "outer", nor the last "acme"
    assert after == ["outer", "outer", "outer"]  # each request's end restores what was there


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


def test_a_500_and_its_log_line_carry_the_request_id_and_tenant(tmp_path: Path) -> None:
    """A bug in an endpoint: the problem+json 500 echoes the request's X-Request-ID (it is
    answered inside the request, not by Starlette's outermost handler) and the "unhandled
    error" line names the request id and the tenant; the connection closes, the next request
    on a new one succeeds."""
    admin = "admin-key-for-correlation-tests"
    settings = make_settings(tmp_path, api_key=admin)
    application = create_app(settings)
    router = APIRouter(dependencies=[Depends(require_api_key)])

    @router.get("/v1/_boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    application.include_router(router)
    stream, stop = _json_lines("app.errors")
    try:
        with served(application, log_level="warning") as url, \
                httpx.Client(base_url=url) as http:
            key = create_key(settings, "team-vision")
            r = http.get("/v1/_boom", headers={"X-Request-ID": "boom-1",
                                               "Authorization": f"Bearer {key.key}"})
            assert r.status_code == 500, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.headers[HEADER] == "boom-1" and r.headers["connection"] == "close"
            assert r.json()["detail"] == "unexpected RuntimeError; the error was logged"
            r = http.get("/v1/_boom", headers={"Authorization": f"Bearer {admin}"})
            assert r.status_code == 500 and len(r.headers[HEADER]) == 32  # a generated id
            generated = r.headers[HEADER]
            assert http.get("/healthz").status_code == 200
    finally:
        stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    errors = [(line["request_id"], line["tenant"], "RuntimeError: a bug" in line["exception"])
              for line in lines if line["message"] == "unhandled error on GET /v1/_boom"]
    assert errors == [("boom-1", "team-vision", True), (generated, None, True)], lines
