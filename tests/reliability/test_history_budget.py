"""History responses are bounded and streamed (issue 13 item 5): a downsampled response over
GRADWATCH_MAX_HISTORY_VALUES points is a 422 saying how to ask for less; a full-resolution
read over it is paged (tests/reliability/test_history_pages.py); what is served is encoded
piece by piece (chunked, never one big string) and identical to the documented format. On
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.testclient import TestClient
from reliability_backends import database_url as database_url  # the fixture

from app.db import unit_of_work
from app.jsonutil import iter_json
from app.lifecycle import move_job
from app.sink import DatabaseSink
from core.telemetry import EpochRecord, LayerRecord, StepRecord

SPEC = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 120},
        "model": {"hidden": [{"units": 4}, {"units": 4}]}}


def record(step: int) -> StepRecord:
    grad = math.inf if step == 7 else 1.0 + step
    return StepRecord(step=step, epoch=0, loss=1.0, grad_norm=grad, clipped_grad_norm=grad,
                      lr=0.01, clipped=False,
                      layers=[LayerRecord(layer=i, grad_norm=grad, weight_grad_norm=grad,
                                          weight_norm=1.0, update_norm=0.1) for i in range(3)])


def job_with_history(client: TestClient, records: list[StepRecord],
                     epochs: Sequence[EpochRecord] = ()) -> str:
    """A running job of ``client``'s app whose sink stored ``records`` and ``epochs``."""
    job_id: str = client.post("/v1/jobs", json=SPEC).json()["id"]
    factory: Any = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with unit_of_work(factory) as session:
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, factory, total_steps=len(records), flush_every=100_000)
    sink.write_steps(records)
    for epoch in epochs:
        sink.write_epoch(epoch)
    sink.close()
    return job_id


def settings_for(database_url: str | None, **overrides: Any) -> dict[str, Any]:
    return overrides if database_url is None else {"database_url": database_url, **overrides}


def test_iter_json_is_the_same_json_in_pieces() -> None:
    body = {"a": [{"s": [1, 2.5, math.nan]}, {"s": []}], "b": None, "c": {"d": [math.inf]}}
    pieces = list(iter_json(body))
    assert len(pieces) > 5
    assert json.loads(b"".join(pieces)) == {"a": [{"s": [1, 2.5, "NaN"]}, {"s": []}],
                                            "b": None, "c": {"d": ["Infinity"]}}


def test_a_downsampled_history_over_the_budget_is_422_and_what_is_served_is_streamed(
        make_client: Callable[..., TestClient], database_url: str | None) -> None:
    client = make_client(**settings_for(database_url, max_history_values=1000,
                                        max_history_points=200))
    job_id = job_with_history(client, [record(s) for s in range(500)])

    # 3 layers x 8 metrics x 100 points (downsampled: one response): over the budget of 1,000
    r = client.get(f"/v1/jobs/{job_id}/gradients", params={"max_points": 100})
    assert r.status_code == 422 and r.json()["limit"] == 1000
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "`layer`" in r.json()["detail"]
    # downsampled to more points per series than GRADWATCH_MAX_HISTORY_POINTS
    r = client.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": 400})
    assert r.status_code == 422 and r.json()["limit"] == 200
    assert "GRADWATCH_MAX_HISTORY_POINTS" in r.json()["detail"]

    r = client.get(f"/v1/jobs/{job_id}/gradients",
                   params={"layer": 1, "metrics": "grad_norm", "max_points": 1000})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "content-length" not in r.headers  # streamed
    assert "link" not in r.headers and r.json()["next_cursor"] is None  # within the budget
    series = r.json()["layers"][0]["series"]["grad_norm"]
    assert series["steps"] == list(range(500)) and series["values"][7] == "Infinity"
    assert client.get(f"/v1/jobs/{job_id}/metrics",
                      params={"max_points": 100}).json()["downsampled"] is True
    assert client.get("/healthz").status_code == 200
