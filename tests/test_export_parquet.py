"""History export as Parquet: the CSV's columns, typed, every stored point equal bit for bit to
the JSON histories at full resolution (NaN, ±Inf kept), written one row group per window."""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import LONG_SPEC, LiveServer
from fastapi.testclient import TestClient
from test_export import TANH_SPEC, finished, from_json, same

from app.exports import CSV_COLUMNS, PARQUET, WINDOW, parquet_schema
from app.showcase import DIVERGING_SPEC

pytestmark = pytest.mark.timeout(180)


def read_parquet(http: Any, job_id: str, table: str) -> pq.ParquetFile:
    r = http.get(f"/v1/jobs/{job_id}/{table}.parquet")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == PARQUET
    assert r.headers["content-disposition"] == \
        f'attachment; filename="{job_id}-{table}.parquet"'
    f = pq.ParquetFile(io.BytesIO(r.content))
    assert f.schema_arrow.names == list(CSV_COLUMNS[table])
    assert f.schema_arrow == parquet_schema(table)  # typed as documented
    return f


@pytest.mark.parametrize("spec", [DIVERGING_SPEC, TANH_SPEC], ids=["diverging", "tanh"])
def test_metrics_parquet_equals_the_full_resolution_json_history(
        live: LiveServer, spec: dict[str, Any]) -> None:
    job_id = finished(live, spec)
    rows = read_parquet(live.http, job_id, "metrics").read().to_pylist()
    history = live.http.get(f"/v1/jobs/{job_id}/metrics",
                            params={"max_points": 100_000}).json()
    total = live.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"]
    assert [r["step"] for r in rows] == list(range(total))
    for name in ("loss", "grad_norm", "clipped_grad_norm", "lr"):
        series = history["series"][name]
        assert series["steps"] == [r["step"] for r in rows]
        for row, value in zip(rows, series["values"], strict=True):
            assert same(row[name], from_json(value)), (row["step"], name)
    assert rows[-1]["epoch"] == len(history["epochs"]["epoch"]) - 1
    assert {type(r["clipped"]) for r in rows} == {bool}
    csv_rows = live.http.get(f"/v1/jobs/{job_id}/metrics.csv").text.splitlines()[1:]
    assert [c.rsplit(",", 1)[1] for c in csv_rows] == \
        [str(r["clipped"]).lower() for r in rows]
    if spec is DIVERGING_SPEC:
        values = [r["grad_norm"] for r in rows] + [r["loss"] for r in rows]
        assert any(math.isinf(v) for v in values) and any(math.isnan(v) for v in values)


@pytest.mark.parametrize("spec", [DIVERGING_SPEC, TANH_SPEC], ids=["diverging", "tanh"])
def test_gradients_parquet_has_every_step_and_layer_equal_to_the_json(
        live: LiveServer, spec: dict[str, Any]) -> None:
    job_id = finished(live, spec)
    parquet = read_parquet(live.http, job_id, "gradients")
    rows = parquet.read().to_pylist()
    history = live.http.get(f"/v1/jobs/{job_id}/gradients",
                            params={"max_points": 100_000}).json()
    layers = history["layers"]
    steps = layers[0]["series"]["grad_norm"]["steps"]
    assert [(r["step"], r["layer"]) for r in rows] == \
        [(s, ly["layer"]) for s in steps for ly in layers]
    by_key = {(r["step"], r["layer"]): r for r in rows}
    checked = absent = non_finite = 0
    for layer in layers:
        for name, series in layer["series"].items():
            values = dict(zip(series["steps"], series["values"], strict=True))
            for step in steps:
                expected = from_json(values.get(step))
                assert same(by_key[(step, layer["layer"])][name], expected), \
                    (step, layer["layer"], name)
                checked += 1
                absent += expected is None
                non_finite += expected is not None and not math.isfinite(expected)
    assert checked == len(rows) * (len(CSV_COLUMNS["gradients"]) - 3)
    assert absent > 0  # e.g. saturated_fraction of a ReLU layer: null, not NaN
    if spec is DIVERGING_SPEC:
        assert non_finite > 0
    else:  # 300 steps flushed every 20: several windows, one row group each
        chunks = math.ceil(len(steps) / 20)
        assert parquet.metadata.num_row_groups == math.ceil(chunks / WINDOW) > 1


def test_a_queued_job_exports_an_empty_file_and_an_unknown_job_is_404(
        client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=LONG_SPEC).json()["id"]  # no workers: stays queued
    for table in ("metrics", "gradients"):
        empty = read_parquet(client, job_id, table)
        assert empty.metadata.num_rows == 0
        r = client.get(f"/v1/jobs/00000000-0000-0000-0000-000000000000/{table}.parquet")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
