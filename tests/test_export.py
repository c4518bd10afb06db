"""History export: every stored point as CSV, equal bit for bit to the JSON histories at full
resolution, NaN/Inf written as nan/inf/-inf; a running job exports what is stored so far."""

from __future__ import annotations

import csv
import io
import math
import struct
import time
from typing import Any

import pytest
from conftest import LONG_SPEC, LiveServer
from fastapi.testclient import TestClient

from app.exports import CSV_COLUMNS
from app.showcase import DIVERGING_SPEC

pytestmark = pytest.mark.timeout(180)

TERMINAL = {"succeeded", "failed", "cancelled"}
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
TANH_SPEC: dict[str, Any] = {
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
    "model": {"hidden": [{"units": 8, "activation": "tanh"}, {"units": 8}]},
    "training": {"epochs": 12, "batch_size": 8},  # 300 steps: many chunks (flush every 20)
}


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def from_json(value: Any) -> float | None:
    if value is None:
        return None
    return NON_FINITE[value] if isinstance(value, str) else float(value)


def from_csv(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def same(a: float | None, b: float | None) -> bool:
    """Equal bit for bit (NaN equals NaN)."""
    if a is None or b is None:
        return a is b
    return bits(a) == bits(b) or (math.isnan(a) and math.isnan(b))


def read_csv(live: LiveServer, job_id: str, table: str) -> list[dict[str, str]]:
    r = live.http.get(f"/v1/jobs/{job_id}/{table}.csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-{table}.csv"'
    reader = csv.reader(io.StringIO(r.text))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS[table]
    return [dict(zip(header, row, strict=True)) for row in reader]


def finished(live: LiveServer, spec: dict[str, Any]) -> str:
    job_id = str(live.http.post("/v1/jobs", json=spec).json()["id"])
    live.wait_for(job_id, TERMINAL)
    return job_id


@pytest.mark.parametrize("spec", [DIVERGING_SPEC, TANH_SPEC], ids=["diverging", "tanh"])
def test_metrics_csv_equals_the_full_resolution_json_history(live: LiveServer,
                                                             spec: dict[str, Any]) -> None:
    job_id = finished(live, spec)
    rows = read_csv(live, job_id, "metrics")
    history = live.http.get(f"/v1/jobs/{job_id}/metrics",
                            params={"max_points": 100_000}).json()
    assert history["downsampled"] is False
    total = live.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"]
    assert [int(r["step"]) for r in rows] == list(range(total))  # every step, in order
    for name in ("loss", "grad_norm", "clipped_grad_norm", "lr"):
        series = history["series"][name]
        assert series["steps"] == [int(r["step"]) for r in rows]
        for row, value in zip(rows, series["values"], strict=True):
            assert same(from_csv(row[name]), from_json(value)), (row["step"], name)
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == sorted(epochs) and epochs[-1] == len(history["epochs"]["epoch"]) - 1
    assert {r["clipped"] for r in rows} <= {"true", "false"}
    if spec is DIVERGING_SPEC:  # the climb ends in Infinity and NaN: written as such
        cells = {r["grad_norm"] for r in rows} | {r["loss"] for r in rows}
        assert "inf" in cells and "nan" in cells


@pytest.mark.parametrize("spec", [DIVERGING_SPEC, TANH_SPEC], ids=["diverging", "tanh"])
def test_gradients_csv_has_one_row_per_step_and_layer_equal_to_the_json(
        live: LiveServer, spec: dict[str, Any]) -> None:
    job_id = finished(live, spec)
    rows = read_csv(live, job_id, "gradients")
    history = live.http.get(f"/v1/jobs/{job_id}/gradients",
                            params={"max_points": 100_000}).json()
    layers = history["layers"]
    steps = layers[0]["series"]["grad_norm"]["steps"]
    assert len(rows) == len(steps) * len(layers)
    by_key = {(int(r["step"]), int(r["layer"])): r for r in rows}
    assert [(int(r["step"]), int(r["layer"])) for r in rows] == sorted(by_key)
    checked = absent = non_finite = 0
    for layer in layers:
        for name, series in layer["series"].items():
            # a series the layer does not have (dead_fraction of tanh) is empty in JSON and
            # blank in every CSV row
            values = dict(zip(series["steps"], series["values"], strict=True))
            for step in steps:
                cell = by_key[(step, layer["layer"])][name]
                expected = from_json(values.get(step))
                assert same(from_csv(cell), expected), (step, layer["layer"], name, cell)
                checked += 1
                absent += expected is None
                non_finite += expected is not None and not math.isfinite(expected)
    assert checked == len(rows) * (len(CSV_COLUMNS["gradients"]) - 3)
    assert absent > 0  # e.g. saturated_fraction of a ReLU layer
    if spec is DIVERGING_SPEC:
        assert non_finite > 0


def test_a_running_jobs_export_holds_what_is_stored_so_far(live: LiveServer) -> None:
    job_id = live.http.post("/v1/jobs", json=LONG_SPEC).json()["id"]
    deadline = time.monotonic() + 30
    while live.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] < 100:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        rows = read_csv(live, job_id, "metrics")
        assert rows and [int(r["step"]) for r in rows] == list(range(len(rows)))
        grads = read_csv(live, job_id, "gradients")
        assert len(grads) >= 3 * len(rows)  # stored meanwhile: never fewer
        assert [int(r["layer"]) for r in grads[:3]] == [0, 1, 2]
        assert live.http.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    finally:
        live.http.post(f"/v1/jobs/{job_id}/cancel")
        live.wait_for(job_id, TERMINAL)


def test_a_queued_job_exports_a_header_and_an_unknown_job_is_404(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=LONG_SPEC).json()["id"]  # no workers: stays queued
    for table in ("metrics", "gradients"):
        r = client.get(f"/v1/jobs/{job_id}/{table}.csv")
        assert r.status_code == 200 and r.text == ",".join(CSV_COLUMNS[table]) + "\n"
        r = client.get(f"/v1/jobs/00000000-0000-0000-0000-000000000000/{table}.csv")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
