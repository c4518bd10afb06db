"""API contract over HTTP (TestClient, no worker processes: submitted jobs stay queued)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import SMALL_SPEC
from fastapi.testclient import TestClient

from app.db import unit_of_work
from app.lifecycle import move_job
from app.models import utcnow
from app.repositories import JobRepository
from app.sink import DatabaseSink
from core.telemetry import LayerRecord, NonFiniteEvent, StepRecord

PROBLEM = "application/problem+json"


def submit(client: TestClient, spec: dict[str, Any] | None = None, **headers: str) -> Any:
    return client.post("/v1/jobs", json=SMALL_SPEC if spec is None else spec, headers=headers)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"] and body["title"] and body["type"]
    return body


def finish(client: TestClient, job_id: str, records: list[StepRecord],
           first_non_finite: NonFiniteEvent | None = None) -> None:
    """Store records for a job and mark it succeeded, as a worker would."""
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with unit_of_work(factory) as session:
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, factory, total_steps=len(records), flush_every=1000)
    if first_non_finite is not None:  # the trainer locates it and tells the sink
        sink.write_non_finite(first_non_finite)
    sink.write_steps(records)
    sink.close()
    with unit_of_work(factory) as session:
        move_job(session, job_id, "succeeded", stop_reason="completed")


def step(i: int, grad: float, loss: float = 1.0) -> StepRecord:
    return StepRecord(step=i, epoch=0, loss=loss, grad_norm=grad, clipped_grad_norm=grad,
                      lr=0.01, clipped=False,
                      layers=[LayerRecord(layer=0, grad_norm=grad, weight_grad_norm=grad,
                                          weight_norm=1.0, update_norm=0.1)])


# ---- submission and validation ----


def test_submit_answers_202_with_location_and_the_echoed_spec(client: TestClient) -> None:
    r = submit(client, {"data": {"source": "synthetic", "name": "spirals"}})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"]["step"] == 0
    spec = job["spec"]
    assert spec["optimizer"]["name"] == "sgd" and spec["training"]["epochs"] == 20
    assert "name" in spec and spec["name"] is None  # absent optionals are explicit null
    assert client.get(f"/v1/jobs/{job['id']}").json()["spec"] == spec


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"data": {"source": "synthetic", "name": "nope"}}, ["body", "data"]),
        ({"data": {"source": "synthetic", "name": "spirals"}, "seed": "1"}, ["body", "seed"]),
        ({"data": {"source": "synthetic", "name": "spirals"},
          "training": {"shuffle": 1}}, ["body", "training", "shuffle"]),
        ({"data": {"source": "synthetic", "name": "spirals"}, "typo": 1}, ["body", "typo"]),
        ({}, ["body", "data"]),
        ({"data": {"source": "synthetic", "name": "spirals"},
          "optimizer": {"name": "sgd", "lr": -1}}, ["body", "optimizer"]),
    ],
)
def test_invalid_specs_are_422_with_field_paths(client: TestClient, body: Any, loc: list[Any]) -> None:
    problem = assert_problem(submit(client, body), 422)
    assert any(e["loc"][:len(loc)] == loc for e in problem["errors"]), problem["errors"]


def test_exceeding_a_limit_is_422_naming_the_limit_and_value(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_layers=3)
    spec = copy.deepcopy(SMALL_SPEC)
    spec["model"]["hidden"] = [{"units": 4}] * 5
    problem = assert_problem(submit(client, spec), 422)
    assert "max_layers" in problem["detail"] and "6" in problem["detail"]
    assert problem["errors"][0]["type"] == "limit_exceeded"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_a_spec_are_422(client: TestClient, token: str) -> None:
    raw = '{"data": {"source": "synthetic", "name": "spirals", "noise": ' + token + "}}"
    r = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 422)


def test_a_predict_body_is_not_called_a_spec(client: TestClient) -> None:
    """The strict JSON parser serves several bodies: a predict body's errors speak of rows,
    not of a spec (they said 'NaN is not a valid number in a spec', 'send a JSON
    TrainingSpec')."""
    job = "00000000-0000-0000-0000-000000000000"  # the body is read before the job
    for raw, says in (('{"X": [[1.0, NaN]]}', "NaN is not a JSON number"),
                      ("", "send a JSON object with `X` (rows of numbers) or `dataset_id`")):
        r = client.post(f"/v1/jobs/{job}/predict", content=raw,
                        headers={"content-type": "application/json"})
        problem = assert_problem(r, 422)
        assert says in problem["detail"] and "spec" not in problem["detail"].lower(), problem
    r = client.post("/v1/jobs", content="", headers={"content-type": "application/json"})
    assert "send a JSON TrainingSpec" in assert_problem(r, 422)["detail"]


@pytest.mark.parametrize("raw", ["{not json", "", "[1, 2]", "null", '"spec"'])
def test_malformed_bodies_are_422(client: TestClient, raw: str) -> None:
    r = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert_problem(r, 422)


def test_non_json_body_is_415(client: TestClient) -> None:
    r = client.post("/v1/jobs", content="data=1", headers={"content-type": "text/plain"})
    assert_problem(r, 415)


def test_a_body_over_the_limit_is_413_before_parsing(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=2048)
    spec = copy.deepcopy(SMALL_SPEC)
    spec["name"] = "x" * 100
    spec["data"] = {"source": "inline", "task": "regression",
                    "X": [[float(i)] for i in range(500)], "y": [0.0] * 500}
    body = assert_problem(submit(client, spec), 413)
    assert "2048" in body["detail"]

    def chunks() -> Any:
        yield json.dumps(spec).encode()

    r = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(r, 413)


def test_unknown_job_route_and_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/jobs/00000000-0000-0000-0000-000000000000"), 404)
    assert_problem(client.get("/v1/nothing-here"), 404)
    assert_problem(client.put("/v1/jobs"), 405)
    assert_problem(client.get("/v1/jobs?limit=0"), 422)
    assert_problem(client.get("/v1/jobs?status=bogus"), 422)
    assert_problem(client.get("/v1/jobs?cursor=%%%"), 422)


# ---- idempotency ----


def test_idempotency_key_same_spec_returns_the_same_job(client: TestClient) -> None:
    first = submit(client, SMALL_SPEC, **{"Idempotency-Key": "k1"})
    assert first.status_code == 202
    # the same validated spec, written differently (a default spelled out)
    again_spec = {**SMALL_SPEC, "seed": 0}
    again = submit(client, again_spec, **{"Idempotency-Key": "k1"})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = {**SMALL_SPEC, "seed": 1}
    problem = assert_problem(submit(client, other, **{"Idempotency-Key": "k1"}), 422)
    assert first.json()["id"] in problem["detail"]


def test_idempotency_key_is_freed_when_its_job_is_deleted(client: TestClient) -> None:
    job_id = submit(client, SMALL_SPEC, **{"Idempotency-Key": "k2"}).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    again = submit(client, {**SMALL_SPEC, "seed": 5}, **{"Idempotency-Key": "k2"})
    assert again.status_code == 202 and again.json()["id"] != job_id


def test_idempotency_key_in_flight_is_409(client: TestClient) -> None:
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    job_id = submit(client, SMALL_SPEC, **{"Idempotency-Key": "k3"}).json()["id"]
    with unit_of_work(factory) as session:  # as if the first request had not enqueued yet
        job = JobRepository(session).get(job_id)
        assert job is not None
        job.enqueued_at = None
    assert_problem(submit(client, SMALL_SPEC, **{"Idempotency-Key": "k3"}), 409)


# ---- listing, cancel, delete ----


def test_list_is_newest_first_with_cursor_pagination_and_filters(client: TestClient) -> None:
    ids = [submit(client, {**SMALL_SPEC, "seed": i}).json()["id"] for i in range(5)]
    client.post(f"/v1/jobs/{ids[1]}/cancel")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert "spec" not in client.get("/v1/jobs").json()["items"][0]
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    queued = client.get("/v1/jobs", params=[("status", "queued"), ("status", "running")]).json()
    assert len(queued["items"]) == 4


def test_cancel_and_delete_follow_the_job_states(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    assert_problem(client.delete(f"/v1/jobs/{job_id}"), 409)  # not terminal yet
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409)  # already terminal
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert_problem(client.get(f"/v1/jobs/{job_id}"), 404)
    assert_problem(client.delete(f"/v1/jobs/{job_id}"), 404)


# ---- histories and JSON of non-finite numbers ----


def test_nan_and_infinity_round_trip_through_db_and_json(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    finish(client, job_id, [step(0, 1.0), step(1, math.inf), step(2, math.nan, loss=math.nan),
                            step(3, -math.inf)], NonFiniteEvent(1, 0, "gradient", "inf"))
    r = client.get(f"/v1/jobs/{job_id}/gradients")
    assert r.status_code == 200
    assert "NaN" in r.text and "Infinity" in r.text
    assert r.json()["layers"][0]["series"]["grad_norm"]["values"] == [1.0, "Infinity", "NaN",
                                                                     "-Infinity"]
    series = client.get(f"/v1/jobs/{job_id}/metrics").json()["series"]
    assert series["loss"]["values"][2] == "NaN"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["latest"]["grad_norm"] == "-Infinity"
    assert job["first_non_finite"]["step"] == 1
    assert job["first_non_finite"]["description"] == "first Inf at step 1 in layer 0's gradient"
    # the strict parser of the standard library accepts the body: no bare NaN tokens
    json.loads(r.text, parse_constant=lambda t: pytest.fail(f"bare {t} in JSON"))


def test_downsampling_keeps_an_injected_spike(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    records = [step(i, 1.0 + (i % 7) * 0.01) for i in range(5000)]
    records[3210] = step(3210, 1e9)
    records[4000] = step(4000, math.nan)
    finish(client, job_id, records)
    body = client.get(f"/v1/jobs/{job_id}/gradients", params={"max_points": 100}).json()
    assert body["downsampled"] and body["method"] == "minmax-buckets" and body["bucket_size"]
    assert body["points_in_range"] == 5000
    grad = body["layers"][0]["series"]["grad_norm"]
    assert len(grad["steps"]) <= 100
    points = dict(zip(grad["steps"], grad["values"], strict=True))
    assert points[3210] == 1e9 and points[4000] == "NaN"
    assert grad["steps"][0] == 0 and grad["steps"][-1] == 4999
    window = client.get(f"/v1/jobs/{job_id}/metrics", params={
        "start_step": 3000, "end_step": 3500, "max_points": 20, "metrics": "grad_norm"}).json()
    assert window["start_step"] == 3000 and window["end_step"] == 3500
    assert 3210 in window["series"]["grad_norm"]["steps"]
    full = client.get(f"/v1/jobs/{job_id}/gradients",
                      params={"layer": 0, "start_step": 10, "end_step": 19}).json()
    assert not full["downsampled"] and full["layers"][0]["series"]["grad_norm"]["steps"] == list(range(10, 20))


def test_history_parameters_are_validated(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    finish(client, job_id, [step(0, 1.0)])
    assert_problem(client.get(f"/v1/jobs/{job_id}/gradients?max_points=5"), 422)
    assert_problem(client.get(f"/v1/jobs/{job_id}/gradients?max_points=2147483649"), 422)
    # past GRADWATCH_MAX_HISTORY_POINTS is fine when nothing is downsampled: every point
    assert not client.get(f"/v1/jobs/{job_id}/gradients?max_points=10000000").json()["downsampled"]
    assert_problem(client.get(f"/v1/jobs/{job_id}/gradients?start_step=5&end_step=1"), 422)
    assert_problem(client.get(f"/v1/jobs/{job_id}/gradients?metrics=bogus"), 422)
    assert_problem(client.get(f"/v1/jobs/{job_id}/gradients?layer=9"), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}/gradients?layer=-1"), 422)
    empty = client.get(f"/v1/jobs/{submit(client).json()['id']}/gradients").json()
    assert empty["layers"] == [] and empty["start_step"] is None


def test_provisional_diagnosis_of_an_unfinished_job(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/diagnostics")
    assert r.status_code == 200 and r.json()["final"] is False


# ---- events ----


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def test_events_snapshot_then_end_and_resume_with_last_event_id(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    events = parse_sse(client.get(f"/v1/jobs/{job_id}/events").text)
    # a first connection: the snapshot, then the job's whole history (a fast job shows it)
    assert [(e["event"], e["data"]["status"]) for e in events] == [
        ("snapshot", "cancelled"), ("status", "queued"), ("status", "cancelled")]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and ids[0] == 0
    missed = parse_sse(client.get(f"/v1/jobs/{job_id}/events",
                                  headers={"Last-Event-ID": str(ids[1])}).text)
    assert [(e["event"], e["data"]["status"]) for e in missed] == [("status", "cancelled")]
    assert int(missed[-1]["id"]) == ids[-1]
    assert_problem(client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"}), 422)
    assert_problem(client.get("/v1/jobs/nope/events"), 404)


# ---- auth, health, OpenAPI ----


def test_api_key_protects_every_v1_endpoint(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="s3cret")
    assert client.get("/healthz").status_code == 200
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"),
                         ("GET", "/v1/jobs/x/events"), ("POST", "/v1/preflight"),
                         ("GET", "/v1/datasets"), ("DELETE", "/v1/jobs/x")]:
        r = client.request(method, path, json=SMALL_SPEC if method == "POST" else None)
        assert_problem(r, 401)
        assert "www-authenticate" in r.headers
    assert_problem(client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/v1/jobs", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["checks"]["database"] == "ok"


def test_preflight_and_datasets(client: TestClient) -> None:
    r = client.post("/v1/preflight", json=SMALL_SPEC)
    assert r.status_code == 200 and r.json()["parameter_count"] > 0
    assert_problem(client.post("/v1/preflight", json={"data": {}}), 422)
    names = {d["name"] for d in client.get("/v1/datasets").json()["datasets"]}
    assert {"spirals", "iris"} <= names


def test_openapi_documents_every_operation_and_non_finite_numbers(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    ops = [op for path in schema["paths"].values() for op in path.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    for op in ops:
        assert op.get("summary") and op.get("description") and op.get("tags"), op["operationId"]
    create = schema["paths"]["/v1/jobs"]["post"]
    examples = create["requestBody"]["content"]["application/json"]["examples"]
    assert {"explodes", "healthy"} <= set(examples)
    assert "TrainingSpec" in schema["components"]["schemas"]
    series = schema["components"]["schemas"]["Series"]["properties"]["values"]
    assert "NaN" in json.dumps(series) and "Infinity" in json.dumps(series)
    assert "application/problem+json" in json.dumps(create["responses"]["422"])


def test_swagger_examples_are_valid_specs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    examples = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"][
        "application/json"]["examples"]
    for example in examples.values():
        assert client.post("/v1/preflight", json=example["value"]).status_code == 200


BAD_REQUESTS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/jobs/%00", None),
    ("GET", "/v1/jobs/" + "x" * 5000, None),
    ("GET", "/v1/jobs?limit=abc", None),
    ("GET", "/v1/jobs?limit=99999999999999999999999", None),
    ("GET", "/v1/jobs?cursor=" + "A" * 300, None),
    ("GET", "/v1/jobs?verdict=fine", None),
    ("GET", "/v1/jobs/{id}/gradients?start_step=-1", None),
    ("GET", "/v1/jobs/{id}/gradients?end_step=1e100", None),
    ("GET", "/v1/jobs/{id}/gradients?max_points=NaN", None),
    ("GET", "/v1/jobs/{id}/gradients?layer=abc", None),
    ("GET", "/v1/jobs/{id}/metrics?metrics=loss,,nope", None),
    ("GET", "/v1/jobs/{id}/events?last_event_id=-5", None),
    ("GET", "/v1/jobs/{id}/comparison", None),
    ("GET", "/v1/jobs/{id}/comparison?other=unknown", None),
    ("POST", "/v1/jobs/{id}/repair", {"recommendation": -1}),
    ("POST", "/v1/jobs/{id}/repair", {"recommendation": "0"}),
    ("POST", "/v1/jobs/{id}/repair", {"spec_patch": {"training": {"epochs": "many"}}}),
    ("POST", "/v1/jobs/{id}/repair", {"spec_patch": {"x": 1}, "recommendation": 0}),
    ("POST", "/v1/jobs/{id}/repair", [1, 2, 3]),
    ("POST", "/v1/jobs", {"data": {"source": "inline", "task": "classification",
                                   "X": [[1.0], [2.0, 3.0]], "y": [0, 1]}}),
    ("POST", "/v1/jobs", {"data": {"source": "synthetic", "name": "spirals"},
                          "model": {"hidden": [{"units": 10**12}]}}),
    ("POST", "/v1/jobs", {"data": {"source": "builtin", "name": "mnist"}}),
    ("POST", "/v1/jobs", {"data": {"source": "synthetic", "name": "spirals"},
                          "training": {"batch_size": 0}}),
    ("POST", "/v1/preflight", {"data": []}),
    ("DELETE", "/v1/jobs/{id}", None),
    ("PATCH", "/v1/jobs/{id}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_problem_never_a_500(client: TestClient, method: str, path: str,
                                               body: Any) -> None:
    job_id = submit(client).json()["id"]
    r = client.request(method, path.replace("{id}", job_id), json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), r.text


def test_a_running_job_shows_elapsed_time_and_an_eta(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with unit_of_work(factory) as session:
        move_job(session, job_id, "running", started_at=utcnow() - timedelta(seconds=10))
    queued_like = client.get(f"/v1/jobs/{job_id}").json()["progress"]
    assert queued_like["elapsed_seconds"] >= 10 and queued_like["eta_seconds"] is None
    total = queued_like["total_steps"]
    assert total >= 4
    done_steps = total // 4
    sink = DatabaseSink(job_id, factory, total_steps=total, flush_every=1000)
    sink.write_steps([step(i, 1.0) for i in range(done_steps)])
    sink.flush()
    job = client.get(f"/v1/jobs/{job_id}").json()
    progress, latest = job["progress"], job["latest"]
    assert progress["step"] == done_steps and latest["step"] == done_steps - 1  # count, index
    # a quarter of the steps in >= 10 s: at the same rate, about three times as long to go
    rate = progress["elapsed_seconds"] / done_steps
    assert progress["elapsed_seconds"] >= 10
    assert abs(progress["eta_seconds"] - rate * (total - done_steps)) < 1
    done = submit(client, {**SMALL_SPEC, "seed": 1}).json()["id"]
    finish(client, done, [step(0, 1.0)])
    final = client.get(f"/v1/jobs/{done}").json()["progress"]
    assert final["elapsed_seconds"] is None and final["eta_seconds"] is None


def test_method_not_allowed_names_every_method_of_the_path(client: TestClient) -> None:
    r = client.options("/v1/jobs")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.headers["content-type"].startswith(PROBLEM)
    r = client.put(f"/v1/jobs/{submit(client).json()['id']}")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"


def test_openapi_declares_the_api_key_only_when_one_is_configured(
        make_client: Callable[..., TestClient]) -> None:
    open_doc = make_client().get("/openapi.json").json()
    assert "securitySchemes" not in open_doc.get("components", {})
    assert all("security" not in op and "401" not in op["responses"]
               for path in open_doc["paths"].values() for op in path.values())
    keyed = make_client(api_key="k").get("/openapi.json").json()
    assert keyed["components"]["securitySchemes"]
    create = keyed["paths"]["/v1/jobs"]["post"]
    assert create["security"] and "401" in create["responses"]
    assert next(iter(create["responses"])) == "202"  # the success status first
