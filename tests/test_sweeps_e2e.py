"""/v1/sweeps end to end: a real server, local worker processes, SQLite migrated by Alembic.

Every member is a real job (parent_sweep_id) trained batched in a worker process; the sweep's
members, its stability grid, its map and its events come back over HTTP.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from conftest import SWEEP_SPEC, LiveServer
from fastapi.testclient import TestClient
from test_stability_plot import star_cells

from app.repositories import JobRepository
from core import Trainer, TrainingSpec

pytestmark = pytest.mark.timeout(180)

SWEEP = {"name": "lr x std", "spec": SWEEP_SPEC,
         "axes": [{"path": "model.init.std", "values": [0.3, 2.0]},
                  {"path": "optimizer.lr", "log_range": [1e-3, 1.0], "points": 3}]}




def sse(live: LiveServer, path: str, timeout: float = 60) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with live.http.stream("GET", path, timeout=httpx.Timeout(timeout)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.strip()
    return events


def test_a_sweep_trains_its_members_as_jobs_and_draws_the_map(live: LiveServer) -> None:
    r = live.http.post("/v1/sweeps", json=SWEEP)
    assert r.status_code == 202, r.text
    sweep_id = r.json()["id"]
    assert r.headers["Location"] == f"/v1/sweeps/{sweep_id}"
    assert len(r.json()["members"]) == 6

    events = sse(live, f"/v1/sweeps/{sweep_id}/events")
    assert events[0]["event"] == "snapshot" and events[-1]["event"] == "status"
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))

    sweep = live.wait_sweep(sweep_id)
    assert sweep["status"] == "succeeded", sweep
    assert sweep["progress"]["members_done"] == 6
    members = sweep["members"]
    assert [m["values"] for m in members[:3]] == [
        {"model.init.std": 0.3, "optimizer.lr": v} for v in (0.001, 0.0316228, 1.0)]
    for m in members:
        job = live.http.get(f"/v1/jobs/{m['job_id']}").json()  # every member is a real job
        assert job["parent_sweep_id"] == sweep_id and job["status"] == "succeeded"
        assert m["verdict"] == job["verdict"] and m["stop_reason"] == job["stop_reason"]
        assert m["predicted_risk"] in ("low", "medium", "high", "critical")
        grads = live.http.get(f"/v1/jobs/{m['job_id']}/gradients").json()
        assert len(grads["layers"]) == 7
    assert all(m["verdict"] == "exploding" for m in members[3:])  # std 2.0 explodes
    # the stream's last event counts the members' verdicts and progress as the sweep has them
    last = events[-1]["data"]
    assert last["progress"] == sweep["progress"], (last, sweep["progress"])
    assert last["verdicts"] == dict(Counter(m["verdict"] for m in members)), last
    # one architecture: the worker that reaches a member first claims its share of the
    # group (half, with 2 workers) and trains it batched; each member ran once
    with live.app.state.sessionmaker() as session:
        rows = [JobRepository(session).get(m["job_id"]) for m in members]
    per_worker = Counter(row.worker_id for row in rows if row is not None)
    assert max(per_worker.values()) >= 3 and None not in per_worker
    assert all(row is not None and row.attempts == 1 for row in rows)
    # a member trained in the sweep equals the same spec trained alone
    alone = Trainer(TrainingSpec.model_validate(
        {**SWEEP_SPEC, "optimizer": {**SWEEP_SPEC["optimizer"], "lr": 0.001}})).run()
    assert members[0]["final_loss"] == pytest.approx(alone.final_loss, rel=1e-10)
    assert members[0]["stop_reason"] == alone.stop_reason

    grid = live.http.get(f"/v1/sweeps/{sweep_id}/stability").json()
    assert grid["x"] == "optimizer.lr" and grid["y"] == "model.init.std"
    assert grid["verdict"][1] == ["exploding"] * 3
    assert grid["rows"][1]["smallest_exploding"] == 0.001
    assert grid["calibration"]["cells"] == 6
    # the recommendation: a real, healthy member of the slice, with its job
    rec = grid["recommended"]
    assert rec is not None, grid["recommended_reason"]
    chosen = next(m for m in members if m["job_id"] == rec["job_id"])
    assert chosen["verdict"] == "healthy" and chosen["values"] == rec["values"]
    assert rec["final_loss"] == chosen["final_loss"] == min(
        m["final_loss"] for m in members if m["verdict"] == "healthy")
    assert rec["margin"] == "none"  # every healthy run sits under an exploding std 2.0 run
    assert rec["reason"] == grid["recommended_reason"] and "no safety margin" in rec["reason"]
    cell = (grid["x_values"].index(rec["values"]["optimizer.lr"]),
            grid["y_values"].index(rec["values"]["model.init.std"]))
    assert grid["member"][cell[1]][cell[0]] == chosen["index"]
    png = live.http.get(f"/v1/sweeps/{sweep_id}/plots/stability")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    verdicts = {v for row in grid["verdict"] for v in row}
    assert star_cells(png.content, 3, 2, verdicts)[0] == {cell}
    svg = live.http.get(f"/v1/sweeps/{sweep_id}/plots/stability", params={"format": "svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml") and b"</svg>" in svg.content
    assert b'<g id="recommended">' in svg.content
    # titled with the sweep's name (matplotlib writes each text as a comment before its glyphs)
    assert f"<!-- lr x std (sweep {sweep_id[:8]}) -->".encode() in svg.content
    bad = live.http.get(f"/v1/sweeps/{sweep_id}/stability", params={"x": "seed"})
    assert bad.status_code == 422 and "not an axis" in bad.json()["detail"]

    assert live.http.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 409
    assert live.http.delete(f"/v1/sweeps/{sweep_id}").status_code == 204
    assert live.http.get(f"/v1/sweeps/{sweep_id}").status_code == 404
    assert live.http.get(f"/v1/jobs/{members[0]['job_id']}").status_code == 404


def test_limits_and_bad_axes_are_422_naming_what_is_wrong(live: LiveServer) -> None:
    too_many = {"spec": SWEEP_SPEC, "axes": [{"path": "optimizer.lr", "log_range": [1e-4, 1.0],
                                        "points": 40},
                                       {"path": "seed", "values": list(range(30))}]}
    r = live.http.post("/v1/sweeps", json=too_many)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["limit"] == "max_members" and "1200" in r.json()["detail"]
    r = live.http.post("/v1/sweeps", json={"spec": SWEEP_SPEC, "axes": [
        {"path": "model.init.std", "values": [0.1]}, {"path": "optimizer.lr"}]})
    assert r.status_code == 422 and "log_range" in r.text
    r = live.http.post("/v1/sweeps", json={"spec": {"data": {"source": "synthetic"}},
                                           "axes": [{"path": "clipping.max_norm",
                                                     "values": [0.1]}]})
    assert r.status_code == 422 and "add `clipping.mode`" in r.json()["detail"]
    assert live.http.get("/v1/jobs", params={"limit": 200}).status_code == 200


def test_axes_into_objects_the_base_spec_leaves_out(client: TestClient) -> None:
    # no optimizer, no model.init, no clipping: the members vary the defaults
    spec = {"data": {"source": "synthetic", "name": "moons", "n_samples": 60},
            "training": {"max_steps": 2}}
    r = client.post("/v1/sweeps", json={"spec": spec, "axes": [
        {"path": "optimizer.lr", "values": [0.1, 0.3]},
        {"path": "model.init.std", "values": [0.5]},
        {"path": "clipping.clip_value", "values": [2.0]}]})
    assert r.status_code == 202, r.text
    members = r.json()["members"]
    specs = [client.get(f"/v1/jobs/{m['job_id']}").json()["spec"] for m in members]
    assert [m["values"]["optimizer.lr"] for m in members] == [0.1, 0.3]
    assert [s["optimizer"] for s in specs] == [
        {"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
        for lr in (0.1, 0.3)]
    assert specs[0]["model"]["init"] == {"scheme": "normal", "std": 0.5, "bias": 0.0}
    assert specs[0]["clipping"] == {"mode": "value", "clip_value": 2.0}
    # ambiguous: Adam and AdamW both have beta1, and the default optimizer is SGD
    r = client.post("/v1/sweeps", json={"spec": spec, "axes": [
        {"path": "seed", "values": [1]}, {"path": "optimizer.beta1", "values": [0.5]}]})
    assert r.status_code == 422 and r.headers["content-type"].startswith(
        "application/problem+json")
    body = r.json()
    assert "axis 'optimizer.beta1'" in body["detail"] and "add `optimizer.name`" in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "axes", 1, "path"]


def test_cancelling_a_sweep_cancels_its_members(live: LiveServer) -> None:
    long = {**SWEEP_SPEC, "data": {"source": "synthetic", "name": "spirals", "n_samples": 2000},
            "training": {"epochs": 200, "batch_size": 16}}
    r = live.http.post("/v1/sweeps", json={"spec": long, "axes": [
        {"path": "optimizer.lr", "values": [0.001, 0.002, 0.003]}]})
    sweep_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while live.http.get(f"/v1/sweeps/{sweep_id}").json()["progress"]["step"] == 0:
        assert time.monotonic() < deadline, "the sweep never started"
        time.sleep(0.1)
    r = live.http.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert r.status_code == 202
    sweep = live.wait_sweep(sweep_id, timeout=60)
    assert sweep["status"] == "cancelled"
    assert {m["status"] for m in sweep["members"]} == {"cancelled"}
    assert all(m["stop_reason"] == "cancelled" for m in sweep["members"])


def test_a_boolean_axis_can_be_held_with_at(live: LiveServer) -> None:
    r = live.http.post("/v1/sweeps", json={
        "name": "standardize",
        "spec": {**SWEEP_SPEC, "training": {"epochs": 1, "batch_size": 64}},
        "axes": [{"path": "seed", "values": [0, 1]},
                 {"path": "optimizer.lr", "values": [0.01, 0.1]},
                 {"path": "data.standardize", "values": [True, False]}]})
    assert r.status_code == 202, r.text
    sweep = live.wait_sweep(r.json()["id"])
    assert sweep["status"] == "succeeded", sweep["progress"]
    base = f"/v1/sweeps/{sweep['id']}/stability?x=optimizer.lr&y=seed"
    held = {}
    for text, value in (("true", True), ("false", False)):
        grid = live.http.get(f"{base}&at.data.standardize={text}")
        assert grid.status_code == 200, grid.text
        assert grid.json()["fixed"] == {"data.standardize": value}
        held[value] = {m for row in grid.json()["member"] for m in row}
    by_index = {m["index"]: m["values"]["data.standardize"] for m in sweep["members"]}
    assert {by_index[i] for i in held[True]} == {True}
    assert {by_index[i] for i in held[False]} == {False}

    # an `at` that would hold nothing is a 422 naming it (it was ignored, or gave an empty
    # grid): a plotted axis, no axis at all, a value the axis does not have
    for query, says in (("at.optimizer.lr=0.1", "optimizer.lr is the map's x axis"),
                        ("at.seed=1", "seed is the map's y axis"),
                        ("at.optimizer.lrr=0.1", "at.optimizer.lrr: not an axis"),
                        ("at.data.standardize=maybe", "'maybe' is not one of the axis's")):
        for path in ("stability", "plots/stability"):
            r = live.http.get(f"/v1/sweeps/{sweep['id']}/{path}?x=optimizer.lr&y=seed&{query}")
            assert r.status_code == 422, (path, query, r.text)
            assert says in r.json()["detail"], r.json()
            assert r.json()["errors"][0]["loc"] == ["query", query.split("=")[0]]
    r = live.http.post(f"/v1/sweeps/{sweep['id']}/launch",
                       json={"x": "optimizer.lr", "y": "seed", "at": {"seed": 1}})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "at", "seed"], \
        r.text
