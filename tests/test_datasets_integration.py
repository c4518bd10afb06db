"""Uploaded data sets in the scale-out setup: PostgreSQL, Redis, and a Celery worker that
shares nothing with the API but the blob directory (as a worker on another machine would)."""

from __future__ import annotations

import signal

import pytest
from test_integration import TINY_SPEC, Cluster, cluster  # noqa: F401  (the module fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_worker_elsewhere_trains_on_an_uploaded_data_set_read_through_the_blob_store(
        cluster: Cluster) -> None:  # noqa: F811
    for worker in cluster.live_workers():
        cluster.kill_group(worker, signal.SIGTERM)
        worker.wait(timeout=60)
    shared = cluster.tmp / "blobs"  # the API's GRADWATCH_BLOB_DIR (<data dir>/blobs)
    elsewhere = cluster.tmp / "other-machine"
    elsewhere.mkdir()
    saved = cluster.env
    cluster.env = {**saved, "GRADWATCH_DATA_DIR": str(elsewhere),
                   "GRADWATCH_BLOB_DIR": str(shared)}
    try:
        cluster.ensure_workers(1)
    finally:
        cluster.env = saved

    rows = "".join(f"{i % 9},{(i * 5) % 7},{i % 2}\n" for i in range(120))
    r = cluster.http.post("/v1/datasets", params={"task": "classification"},
                          content="u,v,label\n" + rows, headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    job_id = cluster.submit({**TINY_SPEC, "data": {"source": "uploaded", "id": ds},
                             "training": {"epochs": 3, "batch_size": 32}})
    # queued or running: the data set is in use (PostgreSQL row locks on both sides)
    assert cluster.http.delete(f"/v1/datasets/{ds}").status_code == 409
    job = cluster.wait_terminal(job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == 3 * 3  # 3 epochs x (96 training rows / 32)
    assert not (elsewhere / "blobs").exists()  # the worker read the shared directory only
    assert cluster.http.delete(f"/v1/datasets/{ds}").status_code == 204
    assert not list((shared / "datasets").rglob("*.npz"))  # models stay with their job
