"""The sweep examples of the OpenAPI documentation: a real sweep created (202 and its
Idempotency-Key replay), read, mapped for stability, launched and listed, a long one cancelled
and deleted, then the webhook deliveries and the metrics text recorded after them; and the
``--only`` refreshers that re-record one sweep operation's examples.

Used by ``bench/openapi_examples.py`` (see its docstring for ``--only``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bench.openapi_recording import LONG, UNKNOWN_ID, app_client, record

__all__ = [
    "SWEEP",
    "create_sweep",
    "finished_sweep",
    "get_sweep",
    "launch",
    "refresh_get_sweep",
    "refresh_launch",
    "refresh_stability",
    "refresh_sweep_create",
    "refresh_sweep_list",
    "sweep_list",
    "sweeps_and_webhooks",
    "wait_sweep",
]

SWEEP = {"name": "lr x init std",
         "spec": {"seed": 0, "data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
                  "model": {"hidden": [{"units": 16}] * 4,
                            "init": {"scheme": "normal", "std": 0.3}},
                  "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                  "training": {"epochs": 2, "batch_size": 32}},
         "axes": [{"path": "model.init.std", "values": [0.3, 3.0]},
                  {"path": "optimizer.lr", "log_range": [0.001, 1.0], "points": 2}]}


def wait_sweep(http: TestClient, sweep_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        sweep: dict[str, Any] = http.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] not in ("queued", "running"):
            return sweep
        time.sleep(0.2)
    raise TimeoutError(sweep_id)


def sweep_list(http: TestClient, ex: dict[str, dict[str, Any]]) -> None:
    """The sweep list (a cancelled and a finished sweep) and its 422 for a bad cursor."""
    record(ex, "listSweeps", http.get("/v1/sweeps", params={"limit": 2}))
    record(ex, "listSweeps", http.get("/v1/sweeps", params={"cursor": "not-a-cursor"}))


def launch(http: TestClient, ex: dict[str, dict[str, Any]], sweep_id: str) -> None:
    """A finished sweep's recommended member launched with more epochs (202), its replay
    (200), and the 404 and 422 (no such member) problems."""
    key = {"Idempotency-Key": "launch-example"}
    body = {"member": "recommended", "spec_patch": {"training": {"epochs": 20}}}
    record(ex, "launchSweep", http.post(f"/v1/sweeps/{sweep_id}/launch", json=body, headers=key))
    record(ex, "launchSweep", http.post(f"/v1/sweeps/{sweep_id}/launch", json=body, headers=key))
    record(ex, "launchSweep", http.post(f"/v1/sweeps/{UNKNOWN_ID}/launch", json={}))
    record(ex, "launchSweep", http.post(f"/v1/sweeps/{sweep_id}/launch", json={"member": 99}))


def create_sweep(http: TestClient, ex: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``POST /v1/sweeps`` with an Idempotency-Key (202) and its replay (200)."""
    key = {"Idempotency-Key": "sweep-example"}
    sweep: dict[str, Any] = record(ex, "createSweep",
                                   http.post("/v1/sweeps", json=SWEEP, headers=key))
    record(ex, "createSweep", http.post("/v1/sweeps", json=SWEEP, headers=key))
    return sweep


def get_sweep(http: TestClient, ex: dict[str, dict[str, Any]], sweep_id: str) -> None:
    """``GET /v1/sweeps/{id}`` of a finished sweep (200) and of an unknown one (404)."""
    record(ex, "getSweep", http.get(f"/v1/sweeps/{sweep_id}"))
    record(ex, "getSweep", http.get(f"/v1/sweeps/{UNKNOWN_ID}"))


def sweeps_and_webhooks(http: TestClient, ex: dict[str, dict[str, Any]], hook_id: str) -> None:
    """Sweeps, webhooks (deliveries of the jobs finished so far) and the metrics text."""
    sweep = create_sweep(http, ex)
    record(ex, "createSweep", http.post("/v1/sweeps", json={
        **SWEEP, "axes": [{"path": "optimizer.momentun", "values": [0.0, 0.9]}]}))
    wait_sweep(http, sweep["id"])
    get_sweep(http, ex, sweep["id"])
    record(ex, "getSweepStability", http.get(f"/v1/sweeps/{sweep['id']}/stability"))
    launch(http, ex, sweep["id"])
    record(ex, "cancelSweep", http.post(f"/v1/sweeps/{sweep['id']}/cancel"))  # 409: finished
    long = http.post("/v1/sweeps", json={
        "spec": LONG, "axes": [{"path": "seed", "values": [0, 1]}]}).json()
    record(ex, "deleteSweep", http.delete(f"/v1/sweeps/{long['id']}"))  # 409: unfinished
    record(ex, "cancelSweep", http.post(f"/v1/sweeps/{long['id']}/cancel"))
    wait_sweep(http, long["id"])
    sweep_list(http, ex)
    record(ex, "deleteSweep", http.delete(f"/v1/sweeps/{long['id']}"))
    ex["deleteSweep"].pop("204", None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        deliveries = http.get(f"/v1/webhooks/{hook_id}/deliveries", params={"limit": 2}).json()
        if deliveries["items"] and deliveries["items"][0]["attempts"] >= 1:
            break
        time.sleep(0.2)
    record(ex, "listWebhookDeliveries", http.get(f"/v1/webhooks/{hook_id}/deliveries",
                                                 params={"limit": 2}))
    record(ex, "listWebhooks", http.get("/v1/webhooks"))
    record(ex, "getWebhook", http.get(f"/v1/webhooks/{hook_id}"))
    record(ex, "getWebhook", http.get(f"/v1/webhooks/{UNKNOWN_ID}"))
    record(ex, "deleteWebhook", http.delete(f"/v1/webhooks/{UNKNOWN_ID}"))
    text = http.get("/metrics").text
    ex["prometheusMetrics"] = {"200": "\n".join(
        line for line in text.splitlines() if line.startswith(("# HELP gradwatch_jobs",
                                                                "# TYPE gradwatch_jobs",
                                                                "gradwatch_jobs")))[:3000]
        + "\n"}


def finished_sweep(http: TestClient) -> str:
    """The id of a finished sweep of :data:`SWEEP`."""
    sweep_id: str = http.post("/v1/sweeps", json=SWEEP).json()["id"]
    wait_sweep(http, sweep_id)
    return sweep_id


def refresh_sweep_list(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    """The sweeps of :func:`sweeps_and_webhooks` (a finished and a cancelled one), then the
    list."""
    with app_client(tmp, workers=1) as http:
        finished_sweep(http)
        long = http.post("/v1/sweeps", json={
            "spec": LONG, "axes": [{"path": "seed", "values": [0, 1]}]}).json()
        http.post(f"/v1/sweeps/{long['id']}/cancel")
        wait_sweep(http, long["id"])
        sweep_list(http, ex)


def refresh_stability(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    """The stability grid's 200 only."""
    with app_client(tmp, workers=1) as http:
        record(ex, "getSweepStability", http.get(f"/v1/sweeps/{finished_sweep(http)}/stability"))


def refresh_get_sweep(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    with app_client(tmp, workers=1) as http:
        get_sweep(http, ex, finished_sweep(http))


def refresh_launch(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    with app_client(tmp, workers=1) as http:
        launch(http, ex, finished_sweep(http))


def refresh_sweep_create(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    """createSweep's 202 and its Idempotency-Key replay (200) only."""
    with app_client(tmp, workers=0) as http:
        created: dict[str, dict[str, Any]] = {}
        create_sweep(http, created)
        for status in ("202", "200"):
            ex["createSweep"][status] = created["createSweep"][status]
