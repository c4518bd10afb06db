"""Inputs that used to amplify or recurse (issue 13, items 1 and 7): each gets a bounded 4xx
problem+json, and the server keeps answering."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

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
