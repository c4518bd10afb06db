"""Inputs that used to amplify, recurse or reach the database unchecked (issue 13, items 1,
7, 8, 9): each gets a bounded 4xx problem+json, and the server keeps answering. What reaches
the database (NUL characters, integers past the column types) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from reliability_backends import backend_env
from reliability_backends import database_url as database_url  # the fixture

from app.input_guard import json_depth

PROBLEM = "application/problem+json"
SPEC = {"name": "ok", "data": {"source": "synthetic", "name": "spirals", "n_samples": 60},
        "model": {"hidden": [{"units": 4}]}, "training": {"epochs": 1}}


def test_json_depth_is_measured_on_raw_bytes_skipping_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[["}]}') == 3
    assert json_depth(b'"[[["') == 0
    assert json_depth(b"[" * 1500 + b"]" * 1500) == 1500


def test_validation_errors_of_a_huge_inline_body_are_bounded(
        capped_server: Callable[..., Any]) -> None:
    server = capped_server()
    n = 2_000_000  # 8 MB of strings in y; used to produce ~6M errors and kill the process
    body = {"data": {"source": "inline", "task": "classification",
                     "X": [[0.0]] * 10, "y": ["a"] * n}}
    r = server.http.post("/v1/jobs", content=json.dumps(body),
                         headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    assert len(r.content) < 10_000
    problem = r.json()
    assert problem["errors"][0]["loc"][:3] == ["body", "data", "y"]
    assert server.alive()


def test_every_validation_problem_lists_at_most_fifty_errors(
        capped_server: Callable[..., Any]) -> None:
    server = capped_server()
    spec = {"data": {"source": "synthetic", "name": "spirals"},
            "model": {"hidden": [{"units": "many", "activation": 5}] * 60}}
    problem = server.http.post("/v1/jobs", json=spec).json()
    assert problem["status"] == 422
    assert len(problem["errors"]) == 50 and problem["errors_total"] > 50
    assert f"(and {problem['errors_total'] - 1} more)" in problem["detail"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/preflight"])
def test_deeply_nested_json_is_422_before_parsing(capped_server: Callable[..., Any],
                                                  path: str) -> None:
    server = capped_server()
    r = server.http.post(path, content=b"[" * 1500 + b"]" * 1500,
                         headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["type"].endswith("limit-exceeded")
    assert "nested 1500 deep" in r.json()["detail"]
    repair = server.http.post("/v1/jobs/x/repair",
                              content=b"[" * 1500 + b"]" * 1500,
                              headers={"content-type": "application/json"})
    assert 400 <= repair.status_code < 500
    assert server.alive()


def test_nul_characters_and_out_of_range_integers_are_422(
        capped_server: Callable[..., Any], database_url: str | None) -> None:
    server = capped_server(**backend_env(database_url))
    http = server.http
    job_id = http.post("/v1/jobs", json=SPEC).json()["id"]
    cases = [
        http.post("/v1/jobs", json={**SPEC, "name": "a\u0000b"}),
        http.get("/v1/jobs/abc%00def"),
        http.get("/v1/jobs", params={"parent_id": "a\u0000b"}),
        http.get(f"/v1/jobs/{job_id}/gradients", params={"start_step": 2**63}),
        http.get(f"/v1/jobs/{job_id}/metrics", params={"end_step": 10**19 + 1}),
        http.get(f"/v1/jobs/{job_id}/events", params={"last_event_id": "1" * 24}),
        http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(2**63)}),
        http.get(f"/v1/jobs/{job_id}/gradients", params={"start_step": 2**31}),  # PG: int4
        http.get(f"/v1/jobs/{job_id}/gradients", params={"layer": 2**31}),
        http.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": 2**63}),
        http.get(f"/v1/jobs/{job_id}/metrics", params={"cursor": "a\u0000b"}),
        http.get(f"/v1/jobs/{job_id}/metrics", params={"cursor": "x" * 10_000}),
    ]
    for r in cases:
        assert r.status_code == 422, (r.request.url, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)
    assert server.alive()
