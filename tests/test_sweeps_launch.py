"""Idempotency-Key on POST /v1/sweeps, and POST /v1/sweeps/{id}/launch: the real run launched
like a member (the recommended one by default) with a merge patch, as a job that is not a
member. Real servers and workers (tests/conftest.py); SQLite migrated by Alembic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from conftest import SMALL_SPEC, SWEEP_SPEC, LiveServer, PostgresServer
from fastapi.testclient import TestClient

from app.cli import create_key
from core.diagnostics import apply_merge_patch

PROBLEM = "application/problem+json"

pytestmark = pytest.mark.timeout(240)

TINY: dict[str, Any] = {**SMALL_SPEC, "training": {"epochs": 1, "batch_size": 60}}
SEEDS = {"name": "seeds", "spec": TINY, "axes": [{"path": "seed", "values": [0, 1, 2]}]}

GRID = {"name": "lr x std", "spec": SWEEP_SPEC,
        "axes": [{"path": "model.init.std", "values": [0.3, 2.0]},
                 {"path": "optimizer.lr", "log_range": [1e-3, 1.0], "points": 3}]}
# every member explodes: nothing to recommend
HOPELESS = {"name": "hopeless", "spec": SWEEP_SPEC,
            "axes": [{"path": "model.init.std", "values": [2.0, 3.0]},
                     {"path": "optimizer.lr", "values": [5.0, 20.0]}]}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _job_ids(client: TestClient, headers: dict[str, str] | None = None) -> set[str]:
    r = client.get("/v1/jobs", params={"limit": 200}, headers=headers)
    assert r.status_code == 200, r.text
    return {j["id"] for j in r.json()["items"]}


# ------------------------------------------------------------------ Idempotency-Key on sweeps


def test_the_same_key_twice_makes_one_sweep_and_one_set_of_members(client: TestClient) -> None:
    key = {"Idempotency-Key": "sweep-1"}
    first = client.post("/v1/sweeps", json=SEEDS, headers=key)
    assert first.status_code == 202, first.text
    again = client.post("/v1/sweeps", json=SEEDS, headers=key)
    assert again.status_code == 200, again.text
    assert again.headers["Location"] == first.headers["Location"] == \
        f"/v1/sweeps/{first.json()['id']}"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["members"] == first.json()["members"]
    assert [s["id"] for s in client.get("/v1/sweeps").json()["items"]] == [first.json()["id"]]
    assert _job_ids(client) == {m["job_id"] for m in first.json()["members"]}
    assert len(_job_ids(client)) == 3

    # the same key with another request: 422 naming the sweep, nothing created
    other = client.post("/v1/sweeps", json={**SEEDS, "name": "other"}, headers=key)
    assert other.status_code == 422 and other.headers["content-type"] == PROBLEM
    assert other.json()["type"].endswith("idempotency-key-reused")
    assert other.json()["sweep_id"] == first.json()["id"]
    assert len(_job_ids(client)) == 3
    # without a key, every request is a new sweep
    assert client.post("/v1/sweeps", json=SEEDS).status_code == 202
    assert client.post("/v1/sweeps", json=SEEDS).status_code == 202
    assert len(client.get("/v1/sweeps").json()["items"]) == 3


def test_keys_are_per_tenant(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="adm")
    settings = client.app.state.settings  # type: ignore[attr-defined]
    a = _bearer(create_key(settings, "team-a").key)
    b = _bearer(create_key(settings, "team-b").key)
    key = {"Idempotency-Key": "retry-1"}
    ra = client.post("/v1/sweeps", json=SEEDS, headers={**a, **key})
    rb = client.post("/v1/sweeps", json=SEEDS, headers={**b, **key})
    radm = client.post("/v1/sweeps", json=SEEDS, headers={"X-API-Key": "adm", **key})
    assert (ra.status_code, rb.status_code, radm.status_code) == (202, 202, 202)
    assert len({ra.json()["id"], rb.json()["id"], radm.json()["id"]}) == 3
    assert (ra.json()["tenant"], rb.json()["tenant"]) == ("team-a", "team-b")
    assert not _job_ids(client, a) & _job_ids(client, b)
    # each tenant's retry answers its own
    assert client.post("/v1/sweeps", json=SEEDS, headers={**b, **key}).json()["id"] == \
        rb.json()["id"]
    assert client.post("/v1/sweeps", json=SEEDS, headers={**a, **key}).json()["id"] == \
        ra.json()["id"]


def test_deleting_the_sweep_frees_its_key(client: TestClient) -> None:
    key = {"Idempotency-Key": "sweep-del"}
    first = client.post("/v1/sweeps", json=SEEDS, headers=key).json()
    assert client.post(f"/v1/sweeps/{first['id']}/cancel").status_code == 202
    assert client.delete(f"/v1/sweeps/{first['id']}").status_code == 204
    second = client.post("/v1/sweeps", json=SEEDS, headers=key)
    assert second.status_code == 202, second.text
    assert second.json()["id"] != first["id"]
    assert client.post("/v1/sweeps", json=SEEDS, headers=key).json()["id"] == second.json()["id"]


@pytest.mark.integration
def test_sweep_keys_and_launch_on_postgres(make_client: Callable[..., TestClient],
                                           postgres: PostgresServer) -> None:
    """The unique key and the replay's comparison of the stored (JSONB) request, and a
    launch (queued members: an explicit index) with its launched_from, on PostgreSQL."""
    client = make_client(database_url=postgres.create_database())
    body = {**SEEDS, "axes": [{"path": "optimizer.lr", "log_range": [1e-3, 1.0], "points": 3}]}
    key = {"Idempotency-Key": "pg-1"}
    first = client.post("/v1/sweeps", json=body, headers=key)
    again = client.post("/v1/sweeps", json=body, headers=key)
    assert (first.status_code, again.status_code) == (202, 200), again.text
    assert again.json()["id"] == first.json()["id"] and len(_job_ids(client)) == 3
    other = client.post("/v1/sweeps", json={**body, "name": "x"}, headers=key)
    assert other.status_code == 422
    sid = first.json()["id"]
    r = client.post(f"/v1/sweeps/{sid}/launch", headers={"Idempotency-Key": "pg-l"},
                    json={"member": 2, "spec_patch": {"training": {"epochs": 2}}})
    assert r.status_code == 202, r.text
    assert r.json()["launched_from"]["values"] == {"optimizer.lr": 1.0}
    assert client.post(f"/v1/sweeps/{sid}/launch", headers={"Idempotency-Key": "pg-l"},
                       json={"member": 2, "spec_patch": {"training": {"epochs": 2}}}
                       ).json()["id"] == r.json()["id"]
    assert client.get(f"/v1/sweeps/{sid}").json()["progress"]["members"] == 3
    assert client.post(f"/v1/sweeps/{sid}/cancel").status_code == 202
    assert client.delete(f"/v1/sweeps/{sid}").status_code == 204
    assert client.post("/v1/sweeps", json=body, headers=key).status_code == 202
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["launched_from"]["sweep_id"] == sid


def test_a_replay_before_the_members_were_handed_over_is_in_flight(client: TestClient) -> None:
    """As for jobs: the first request committed but its members are not yet with the executor
    (enqueued_at unset, within the in-flight window) -> 409 idempotency-in-flight."""
    key = {"Idempotency-Key": "slow"}
    first = client.post("/v1/sweeps", json=SEEDS, headers=key).json()
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    from app.models import Job

    with factory() as session:
        session.get(Job, first["members"][0]["job_id"]).enqueued_at = None
        session.commit()
    r = client.post("/v1/sweeps", json=SEEDS, headers=key)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["type"].endswith("idempotency-in-flight")
    assert r.headers["Retry-After"] == "1"


# ------------------------------------------------------------------ launch




@pytest.fixture(scope="module")
def finished(live: LiveServer) -> dict[str, Any]:
    r = live.http.post("/v1/sweeps", json=GRID)
    assert r.status_code == 202, r.text
    sweep = live.wait_sweep(r.json()["id"])
    assert sweep["status"] == "succeeded", sweep
    return sweep


def test_launching_the_recommended_member_with_a_patch(live: LiveServer,
                                                      finished: dict[str, Any]) -> None:
    sid = finished["id"]
    grid = live.http.get(f"/v1/sweeps/{sid}/stability").json()
    rec = grid["recommended"]
    assert rec is not None, grid["recommended_reason"]
    member = live.http.get(f"/v1/jobs/{rec['job_id']}").json()
    listed_before = [s for s in live.http.get("/v1/sweeps").json()["items"] if s["id"] == sid]
    patch = {"training": {"epochs": 6}}

    r = live.http.post(f"/v1/sweeps/{sid}/launch", json={"spec_patch": patch},
                       headers={"Idempotency-Key": "launch-1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["spec"] == apply_merge_patch(member["spec"], patch)
    assert job["spec"]["training"]["epochs"] == 6
    assert job["spec"]["optimizer"]["lr"] == rec["values"]["optimizer.lr"]
    assert job["launched_from"] == {"sweep_id": sid, "member": rec["index"],
                                    "job_id": rec["job_id"], "values": rec["values"],
                                    "recommended": True, "spec_patch": patch}
    assert job["parent_sweep_id"] is None and job["parent_id"] is None
    # a retry answers the same job
    again = live.http.post(f"/v1/sweeps/{sid}/launch", json={"spec_patch": patch},
                           headers={"Idempotency-Key": "launch-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]

    done = live.wait_for(job["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == done["progress"]["total_steps"] > \
        member["progress"]["total_steps"]
    assert done["launched_from"] == job["launched_from"]
    # the sweep did not change: same members, progress and status, in GET and in the list
    after = live.http.get(f"/v1/sweeps/{sid}").json()
    assert after["members"] == finished["members"]
    assert after["progress"] == finished["progress"] and after["status"] == "succeeded"
    listed = [s for s in live.http.get("/v1/sweeps").json()["items"] if s["id"] == sid]
    assert listed == listed_before


def test_launching_an_explicit_member_named(live: LiveServer, finished: dict[str, Any]) -> None:
    sid = finished["id"]
    m = finished["members"][4]
    r = live.http.post(f"/v1/sweeps/{sid}/launch", json={"member": 4, "name": "the real run"})
    assert r.status_code == 202, r.text
    job = r.json()
    member_spec = live.http.get(f"/v1/jobs/{m['job_id']}").json()["spec"]
    assert job["spec"] == {**member_spec, "name": "the real run"}
    assert job["name"] == "the real run"
    assert job["launched_from"]["member"] == 4 and job["launched_from"]["recommended"] is False
    assert job["launched_from"]["values"] == m["values"]
    assert job["launched_from"]["spec_patch"] is None
    # the same key for another member is a different request
    key = {"Idempotency-Key": "launch-2"}
    assert live.http.post(f"/v1/sweeps/{sid}/launch", json={"member": 1},
                          headers=key).status_code == 202
    other = live.http.post(f"/v1/sweeps/{sid}/launch", json={"member": 2}, headers=key)
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")


@pytest.mark.parametrize(("body", "loc"), [
    ({"member": 99}, ["body", "member"]),
    ({"member": -1}, ["body", "member"]),
    ({"member": "best"}, ["body", "member"]),
    ({"member": True}, ["body", "member"]),
    ({"member": "2"}, ["body", "member"]),
    ({"spec_patch": [1, 2]}, ["body", "spec_patch"]),
    ({"spec_patch": {"optimizer": {"lr": -1.0}}}, ["patched_spec", "optimizer"]),
    ({"member": 0, "spec_patch": {"training": {"epochs": "many"}}},
     ["patched_spec", "training", "epochs"]),
    ({"x": "model.depth"}, ["query", "x"]),
    ({"colour": "red"}, ["body", "colour"]),
])
def test_bad_launches_are_422_naming_the_field(live: LiveServer, finished: dict[str, Any],
                                               body: dict[str, Any], loc: list[str]) -> None:
    before = _job_count(live)
    r = live.http.post(f"/v1/sweeps/{finished['id']}/launch", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    locs = [e["loc"][:len(loc)] for e in r.json()["errors"]]
    assert loc in locs, r.json()
    assert _job_count(live) == before


def _job_count(live: LiveServer) -> int:
    return len(live.http.get("/v1/jobs", params={"limit": 200}).json()["items"])


def test_an_unknown_sweep_is_404(live: LiveServer) -> None:
    r = live.http.post("/v1/sweeps/00000000-0000-0000-0000-000000000000/launch", json={})
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith("sweep-not-found")


def test_recommended_without_a_recommendation_is_409_saying_why(live: LiveServer) -> None:
    r = live.http.post("/v1/sweeps", json=HOPELESS)
    assert r.status_code == 202, r.text
    sweep = live.wait_sweep(r.json()["id"])
    grid = live.http.get(f"/v1/sweeps/{sweep['id']}/stability").json()
    assert grid["recommended"] is None, grid
    before = _job_count(live)
    r = live.http.post(f"/v1/sweeps/{sweep['id']}/launch", json={})
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["type"].endswith("no-recommendation")
    assert r.json()["recommended_reason"] == grid["recommended_reason"]
    assert grid["recommended_reason"] in r.json()["detail"]
    assert _job_count(live) == before
    # an explicit member still launches
    assert live.http.post(f"/v1/sweeps/{sweep['id']}/launch",
                          json={"member": 0}).status_code == 202


def test_a_tenant_cannot_launch_another_tenants_sweep(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="adm")
    settings = client.app.state.settings  # type: ignore[attr-defined]
    a = _bearer(create_key(settings, "team-a").key)
    b = _bearer(create_key(settings, "team-b").key)
    sweep = client.post("/v1/sweeps", json=SEEDS, headers=a).json()
    r = client.post(f"/v1/sweeps/{sweep['id']}/launch", json={"member": 0}, headers=b)
    assert r.status_code == 404 and r.json()["type"].endswith("sweep-not-found")
    # the owner may (the member's spec exists while it is queued), and so may the admin; the
    # job is the sweep's tenant's either way
    mine = client.post(f"/v1/sweeps/{sweep['id']}/launch", json={"member": 0}, headers=a)
    assert mine.status_code == 202 and mine.json()["tenant"] == "team-a", mine.text
    adm = client.post(f"/v1/sweeps/{sweep['id']}/launch", json={"member": 1},
                      headers={"X-API-Key": "adm"})
    assert adm.status_code == 202 and adm.json()["tenant"] == "team-a", adm.text
    assert mine.json()["id"] not in _job_ids(client, b)
    # no body means the recommended member; a one-axis sweep has no stability grid, so no
    # recommendation: the grid's 422
    one_axis = client.post(f"/v1/sweeps/{sweep['id']}/launch", headers=a)
    assert one_axis.status_code == 422 and "two axes" in one_axis.json()["detail"]
    assert {mine.json()["id"], adm.json()["id"]} <= _job_ids(client, a)


def test_a_member_whose_job_was_deleted_cannot_be_launched(client: TestClient) -> None:
    sweep = client.post("/v1/sweeps", json=SEEDS).json()
    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 202
    gone = sweep["members"][1]["job_id"]
    assert client.delete(f"/v1/jobs/{gone}").status_code == 204
    r = client.post(f"/v1/sweeps/{sweep['id']}/launch", json={"member": 1})
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith("member-deleted") and "member 1" in r.json()["detail"]
    # the others still launch, even from a cancelled sweep
    ok = client.post(f"/v1/sweeps/{sweep['id']}/launch", json={"member": 2})
    assert ok.status_code == 202 and ok.json()["spec"]["seed"] == 2
