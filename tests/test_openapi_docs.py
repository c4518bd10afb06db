"""The OpenAPI document teaches: real examples that still match the models, descriptions
everywhere; the docs pages load nothing from outside the host."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.openapi_docs import EXAMPLES_FILE, undocumented
from app.routers.pages import STATIC_DIR
from app.schemas import (
    Comparison,
    GradientHistory,
    JobPage,
    JobRead,
    MetricsHistory,
    SweepPage,
)
from app.sweep_schemas import SweepCreated, SweepRead
from core.diagnostics import DiagnosticReport, PreflightReport


@pytest.fixture
def openapi(client: TestClient) -> dict[str, Any]:
    schema: dict[str, Any] = client.get("/openapi.json").json()
    return schema


def _operation(schema: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for path in schema["paths"].values():
        for op in path.values():
            if op.get("operationId") == operation_id:
                return dict(op)
    raise KeyError(operation_id)


def _example(schema: dict[str, Any], operation_id: str, status: str) -> Any:
    content = _operation(schema, operation_id)["responses"][status]["content"]
    return next(iter(content.values()))["example"]


def test_every_field_parameter_and_operation_is_documented(openapi: dict[str, Any]) -> None:
    assert undocumented(openapi) == []


def test_an_idempotent_replay_documents_the_body_of_the_first_answer(
        openapi: dict[str, Any]) -> None:
    """createSweep and createJob: the 200 replay has the 202's schema and an example of it."""
    for operation_id in ("createSweep", "createJob"):
        responses = _operation(openapi, operation_id)["responses"]
        created, replay = (responses[s]["content"]["application/json"] for s in ("202", "200"))
        assert replay["schema"] == created["schema"] and "$ref" in replay["schema"]
    created, replay = (_example(openapi, "createSweep", s) for s in ("202", "200"))
    assert replay["id"] == created["id"] and replay["notify_secret"] is None


def test_examples_come_from_an_exploding_run(openapi: dict[str, Any]) -> None:
    diagnosis = _example(openapi, "getDiagnostics", "200")
    assert diagnosis["verdict"] == "exploding" and diagnosis["findings"]
    assert diagnosis["recommendations"][0]["spec_patch"]
    metrics = json.dumps(_example(openapi, "getMetricsHistory", "200"))
    assert '"Infinity"' in metrics
    gradients = _example(openapi, "getGradientHistory", "200")
    assert gradients["downsampled"] is True
    assert "NaN" in json.dumps(gradients) or "Infinity" in json.dumps(gradients)
    stream = _example(openapi, "streamJobEvents", "200")
    assert "event: alert" in stream and '"terminal":true' in stream


def test_the_422_example_names_field_paths(openapi: dict[str, Any]) -> None:
    problem = _example(openapi, "createJob", "422")
    assert problem["status"] == 422
    assert ["body", "training", "epochs"] in [e["loc"] for e in problem["errors"]]


def test_every_error_response_shows_a_real_problem_of_its_status(openapi: dict[str, Any]
                                                                 ) -> None:
    """No Swagger-invented `"type": "https://example.com/"` bodies: each error response
    carries a recorded problem+json with that status."""
    for path in openapi["paths"].values():
        for op in path.values():
            for status, response in op["responses"].items():
                media = response.get("content", {}).get("application/problem+json")
                if media is not None:
                    assert media["example"]["status"] == int(status), (op["operationId"], status)
                    assert media["example"]["type"].startswith("https://gradwatch.dev/problems/")


@pytest.mark.parametrize(("operation_id", "status", "model"), [
    ("createJob", "202", JobRead), ("getJob", "200", JobRead), ("listJobs", "200", JobPage),
    ("repairJob", "202", JobRead), ("compareJobs", "200", Comparison),
    ("getGradientHistory", "200", GradientHistory), ("getMetricsHistory", "200", MetricsHistory),
    ("getDiagnostics", "200", DiagnosticReport), ("preflightSpec", "200", PreflightReport),
    ("listSweeps", "200", SweepPage), ("createSweep", "202", SweepCreated),
    ("createSweep", "200", SweepCreated), ("getSweep", "200", SweepRead),
])
def test_examples_still_match_the_response_models(
        openapi: dict[str, Any], operation_id: str, status: str, model: type[BaseModel]) -> None:
    """Fails when a model changes and bench/openapi_examples.py was not re-run."""
    model.model_validate(_example(openapi, operation_id, status))


def test_the_stability_example_shows_the_recommendation(openapi: dict[str, Any]) -> None:
    """Fails when the stability grid gains a field and `bench/openapi_examples.py
    --only getSweepStability` was not re-run."""
    from dataclasses import fields

    from core.stability import Recommendation, StabilityGrid

    grid = _example(openapi, "getSweepStability", "200")
    assert {f.name for f in fields(StabilityGrid)} | {"calibration"} == set(grid)
    rec = grid["recommended"]
    assert {f.name for f in fields(Recommendation)} == set(rec)
    assert rec["reason"] == grid["recommended_reason"]
    assert rec["index"] in [m for row in grid["member"] for m in row]


def test_the_success_status_is_documented_with_its_example(openapi: dict[str, Any]) -> None:
    create = _operation(openapi, "createJob")["responses"]
    assert _example(openapi, "createJob", "202")["status"] in ("queued", "running", "succeeded")
    assert "202" in create


def test_examples_file_is_valid_json_with_no_bare_non_finite_tokens() -> None:
    def bare(token: str) -> None:
        raise AssertionError(f"bare {token} in {EXAMPLES_FILE.name}")

    json.loads(EXAMPLES_FILE.read_text(), parse_constant=bare)


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/", "/jobs/some-id"])
def test_pages_use_only_local_assets_and_send_security_headers(client: TestClient,
                                                               path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    for url in re.findall(r'(?:src|href)="([^"]+)"', response.text):
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url


def test_vendored_packages_keep_their_licences() -> None:
    vendor = STATIC_DIR / "vendor"
    for package in ("swagger-ui", "redoc", "uplot"):
        licence = vendor / package / "LICENSE"
        assert licence.is_file() and licence.stat().st_size > 500
    assert "Apache License" in (vendor / "swagger-ui" / "LICENSE").read_text()
    assert Path(vendor / "README.md").is_file()
