"""The API's provisional diagnosis of a job on an uploaded data set knows the data's scale.

The worker diagnoses with the data set's arrays attached to its spec; the API's spec has none,
so the API reads the data set through the blob store as the worker does, measures its scale
once per data set (not once per request), and a data set that is gone gives no scale and no
error. The real worker's final diagnosis is compared in tests/test_datasets_e2e.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.blobstore import blob_store
from app.data_scale import SCALES
from app.datasets import blob_key
from app.db import unit_of_work
from app.diagnosis_cache import PROVISIONAL
from app.lifecycle import move_job
from app.sink import DatabaseSink
from core.diagnostics.reference import data_scale
from core.spec import TrainingSpec
from core.telemetry import LayerRecord, StepRecord

# unstandardised inputs of order 1e3 (RMS ~ 1.2e3): the data_scale finding's case
ROWS = [(1000.0 + 10 * i, 500.0 * (i % 7), i % 2) for i in range(60)]
CSV = "x1,x2,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in ROWS)


def record(step: int) -> StepRecord:
    return StepRecord(step=step, epoch=0, loss=0.7, grad_norm=1.0, clipped_grad_norm=1.0,
                      lr=0.01, clipped=False,
                      layers=[LayerRecord(layer=0, grad_norm=1.0, weight_grad_norm=1.0,
                                          weight_norm=1.0, update_norm=0.01),
                              LayerRecord(layer=1, grad_norm=1.0, weight_grad_norm=1.0,
                                          weight_norm=1.0, update_norm=0.01)])


def running_job(client: TestClient, dataset_id: str, steps: int) -> tuple[str, DatabaseSink]:
    spec = {"data": {"source": "uploaded", "id": dataset_id},
            "model": {"hidden": [{"units": 8, "activation": "tanh"}]},
            "training": {"epochs": 100, "batch_size": 6}}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    factory: Any = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with unit_of_work(factory) as session:
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, factory, total_steps=1000, flush_every=100_000)
    sink.write_steps([record(s) for s in range(steps)])
    sink.flush()
    return job_id, sink


def finding(report: dict[str, Any], kind: str) -> dict[str, Any] | None:
    found = [f for f in report["findings"] if f["kind"] == kind]
    return found[0] if found else None


def test_the_provisional_diagnosis_has_the_uploaded_data_sets_scale_measured_once(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    r = client.post("/v1/datasets", params={"task": "classification"}, content=CSV,
                    headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    job_id, sink = running_job(client, ds, 40)
    # what the worker's diagnosis measures: the job's spec with the arrays attached
    spec = TrainingSpec.model_validate(client.get(f"/v1/jobs/{job_id}").json()["spec"])
    spec.data.attach(np.array([[a, b] for a, b, _ in ROWS]),  # type: ignore[union-attr]
                     np.array([c for _, _, c in ROWS]))
    expected = data_scale(spec)
    assert expected is not None and expected.x_std > 1000 and not expected.standardized

    scales_before, provisional_before = SCALES.computed, PROVISIONAL.computed
    report = client.get(f"/v1/jobs/{job_id}/diagnostics").json()
    assert report["final"] is False
    found = finding(report, "data_scale")
    assert found is not None, report["findings"]  # without the scale: no such finding
    assert found["evidence"]["input_rms"] == expected.x_std
    assert "inputs have RMS" in found["message"]
    flat = finding(report, "flat_loss")  # a constant loss of 0.7: the chance level ln 2
    assert flat is not None and flat["evidence"]["chance_loss"] == expected.chance_loss
    assert flat["evidence"]["at_chance"] == 1
    assert SCALES.computed == scales_before + 1

    sink.write_steps([record(s) for s in range(40, 60)])
    sink.flush()  # the job moved on: a fresh diagnosis, the data set is not read again
    again = client.get(f"/v1/jobs/{job_id}/diagnostics").json()
    assert PROVISIONAL.computed == provisional_before + 2
    assert SCALES.computed == scales_before + 1
    assert finding(again, "data_scale") == found


def test_a_data_set_gone_from_the_blob_store_gives_no_scale_and_no_error(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    ds = client.post("/v1/datasets", params={"task": "classification"}, content=CSV,
                     headers={"Content-Type": "text/csv"}).json()["id"]
    job_id, _ = running_job(client, ds, 40)
    blob_store(client.app.state.settings).delete(blob_key(ds))  # type: ignore[attr-defined]
    r = client.get(f"/v1/jobs/{job_id}/diagnostics")
    assert r.status_code == 200, r.text
    assert r.json()["final"] is False and finding(r.json(), "data_scale") is None
