"""History responses are bounded and streamed (issue 13 item 5): a request whose response
would carry more than GRADWATCH_MAX_HISTORY_VALUES points is a 422 saying how to ask for less;
what is served is encoded series by series (chunked, never one big string) and identical to
the documented format."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from fastapi.testclient import TestClient

from app.db import unit_of_work
from app.jsonutil import iter_json
from app.lifecycle import move_job
from app.sink import DatabaseSink
from core.telemetry import LayerRecord, StepRecord

SPEC = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 120},
        "model": {"hidden": [{"units": 4}, {"units": 4}]}}


def record(step: int) -> StepRecord:
    grad = math.inf if step == 7 else 1.0 + step
    return StepRecord(step=step, epoch=0, loss=1.0, grad_norm=grad, clipped_grad_norm=grad,
                      lr=0.01, clipped=False,
                      layers=[LayerRecord(layer=i, grad_norm=grad, weight_grad_norm=grad,
                                          weight_norm=1.0, update_norm=0.1) for i in range(3)])


def test_iter_json_is_the_same_json_in_pieces() -> None:
    body = {"a": [{"s": [1, 2.5, math.nan]}, {"s": []}], "b": None, "c": {"d": [math.inf]}}
    pieces = list(iter_json(body))
    assert len(pieces) > 5
    assert json.loads(b"".join(pieces)) == {"a": [{"s": [1, 2.5, "NaN"]}, {"s": []}],
                                            "b": None, "c": {"d": ["Infinity"]}}


def test_a_history_over_the_budget_is_422_and_what_is_served_is_streamed(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_history_values=1000)
    job_id = client.post("/v1/jobs", json=SPEC).json()["id"]
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with unit_of_work(factory) as session:
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, factory, total_steps=500, flush_every=10_000)
    sink.write_steps([record(s) for s in range(500)])
    sink.close()

    # 3 layers x 8 metrics x 500 points: over the budget of 1,000
    r = client.get(f"/v1/jobs/{job_id}/gradients", params={"max_points": 1000})
    assert r.status_code == 422 and r.json()["limit"] == 1000
    assert "`layer`" in r.json()["detail"]
    r = client.get(f"/v1/jobs/{job_id}/gradients",
                   params={"layer": 1, "metrics": "grad_norm", "max_points": 1000})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "content-length" not in r.headers  # streamed
    series = r.json()["layers"][0]["series"]["grad_norm"]
    assert series["steps"] == list(range(500)) and series["values"][7] == "Infinity"
    assert client.get(f"/v1/jobs/{job_id}/metrics",
                      params={"max_points": 1000}).status_code == 422  # 4 x 500
    assert client.get(f"/v1/jobs/{job_id}/metrics",
                      params={"max_points": 200}).json()["downsampled"] is True
