"""GET /v1/sweeps: newest first, paged with the jobs list's opaque cursor, scoped to the
caller's tenant, each item's status/progress as GET /v1/sweeps/{id} derives them (computed for
a whole page in a bounded number of queries), filtered by the derived status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import LONG_SPEC, SMALL_SPEC, PostgresServer, counting_statements
from fastapi.testclient import TestClient

from app.cli import create_key
from app.lifecycle import move_job
from app.models import utcnow

PROBLEM = "application/problem+json"

pytestmark = pytest.mark.timeout(180)

TINY: dict[str, Any] = {**SMALL_SPEC, "training": {"epochs": 1, "batch_size": 60}}


def _sweep(client: TestClient, name: str, spec: dict[str, Any] = TINY, seeds: int = 2,
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = client.post("/v1/sweeps", headers=headers, json={
        "name": name, "spec": spec, "axes": [{"path": "seed", "values": list(range(seeds))}]})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def _all(client: TestClient, headers: dict[str, str] | None = None, **params: Any
         ) -> list[dict[str, Any]]:
    """Every item, page by page (limit 2), asserting each page is full but the last."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {"limit": 2, **params, **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/sweeps", params=q, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            assert len(page["items"]) <= 2
            return items
        assert len(page["items"]) == 2


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_sweeps_are_listed_newest_first_across_pages_with_what_get_reports(
        client: TestClient) -> None:
    assert client.get("/v1/sweeps").json() == {"items": [], "next_cursor": None}
    made = [_sweep(client, f"sweep {i}", seeds=1 + i % 3) for i in range(5)]
    first = client.get("/v1/sweeps", params={"limit": 2}).json()
    assert [s["id"] for s in first["items"]] == [made[4]["id"], made[3]["id"]]
    assert first["next_cursor"]
    listed = _all(client)
    assert [s["id"] for s in listed] == [s["id"] for s in reversed(made)]  # no gap, no repeat
    for item in listed:
        full = client.get(f"/v1/sweeps/{item['id']}").json()
        assert "members" not in item and "spec" not in item
        assert item["name"] == full["name"] and item["axes"] == full["axes"]
        assert item["created_at"] == full["created_at"] and full["created_at"].endswith("Z")
        assert item["status"] == full["status"] == "queued"  # no workers: members stay queued
        assert item["progress"] == full["progress"]
        assert item["member_count"] == len(full["members"]) == item["progress"]["members"]
        assert item["verdicts"] == {} and item["links"]["self"] == f"/v1/sweeps/{item['id']}"
    assert [s["member_count"] for s in listed] == [2, 1, 3, 2, 1]
    # the default page holds them all; a cancelled sweep shows as such
    client.post(f"/v1/sweeps/{made[0]['id']}/cancel")
    page = client.get("/v1/sweeps").json()
    assert len(page["items"]) == 5 and page["next_cursor"] is None
    assert page["items"][-1]["status"] == "cancelled"
    assert page["items"][-1]["progress"]["members_done"] == 1


@pytest.mark.parametrize("query", ["cursor=%25%25%25", "cursor=bm90LWpzb24", "limit=0",
                                   "limit=201", "limit=abc", "status=bogus", "tenant=Team%20A"])
def test_bad_list_parameters_are_a_422_problem(client: TestClient, query: str) -> None:
    r = client.get(f"/v1/sweeps?{query}")
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    name = query.split("=")[0]
    assert [name] == [e["loc"][1] for e in r.json()["errors"]]  # ["query", name, ...]


def test_a_tenant_lists_its_own_sweeps_and_the_admin_every_one(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="adm")
    settings = client.app.state.settings  # type: ignore[attr-defined]
    a = _bearer(create_key(settings, "team-a").key)
    b = _bearer(create_key(settings, "team-b").key)
    admin = {"X-API-Key": "adm"}
    made_a = [_sweep(client, f"a{i}", headers=a)["id"] for i in range(3)]
    made_b = [_sweep(client, f"b{i}", headers=b)["id"] for i in range(2)]
    mine = _sweep(client, "admin's", headers=admin)["id"]

    assert [s["id"] for s in _all(client, a)] == made_a[::-1]
    assert [s["id"] for s in _all(client, b)] == made_b[::-1]
    assert {s["tenant"] for s in _all(client, b)} == {"team-b"}
    # a tenant asking for another tenant's still gets its own only
    assert [s["id"] for s in _all(client, a, tenant="team-b")] == made_a[::-1]
    everything = [s["id"] for s in _all(client, admin)]
    assert everything == [mine, *made_b[::-1], *made_a[::-1]]
    assert [s["id"] for s in _all(client, admin, tenant="team-a")] == made_a[::-1]
    assert _all(client, admin, tenant="team-c") == []
    # a cursor is a position only: another tenant's cursor shows nothing of that tenant's
    page = client.get("/v1/sweeps", params={"limit": 1}, headers=b).json()
    rest = client.get("/v1/sweeps", params={"cursor": page["next_cursor"]}, headers=a).json()
    assert [s["id"] for s in rest["items"]] == made_a[::-1]
    assert client.get("/v1/sweeps").status_code == 401


def test_a_page_costs_the_same_queries_however_many_sweeps_it_holds(
        client: TestClient) -> None:
    _sweep(client, "one", seeds=3)
    with counting_statements(client) as one:
        assert len(client.get("/v1/sweeps").json()["items"]) == 1
    for i in range(6):
        _sweep(client, f"more {i}", seeds=3)
    with counting_statements(client) as seven:
        assert len(client.get("/v1/sweeps").json()["items"]) == 7
    assert len(seven) == len(one) <= 4, seven
    assert sum("sweep_members" in s for s in seven) == 1


def _wait(client: TestClient, sweep_id: str, statuses: set[str], timeout: float = 120
          ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        sweep: dict[str, Any] = client.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] in statuses:
            return sweep
        assert time.monotonic() < deadline, (sweep["status"], sweep["progress"])
        time.sleep(0.1)


def test_the_status_filter_selects_by_the_status_get_reports(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(workers=1)
    done = _sweep(client, "done")["id"]
    finished = _wait(client, done, {"succeeded", "failed", "cancelled"})
    assert finished["status"] == "succeeded"
    long = _sweep(client, "long", spec=LONG_SPEC)["id"]
    _wait(client, long, {"running"})
    waiting = _sweep(client, "waiting")["id"]  # the only worker is busy with `long`
    by_status = {s["id"]: s for s in _all(client)}
    assert {i: by_status[i]["status"] for i in (done, long, waiting)} == {
        done: "succeeded", long: "running", waiting: "queued"}
    item = by_status[done]
    assert item["progress"] == finished["progress"] and item["progress"]["fraction"] == 1.0
    verdicts: dict[str, int] = {}
    for m in finished["members"]:
        verdicts[m["verdict"]] = verdicts.get(m["verdict"], 0) + 1
    assert item["verdicts"] == verdicts and sum(verdicts.values()) == 2

    def listed(*statuses: str) -> list[str]:
        return [s["id"] for s in _all(client, status=list(statuses))]

    assert listed("queued") == [waiting]
    assert listed("running") == [long]
    assert listed("succeeded") == [done]
    assert listed("queued", "succeeded") == [waiting, done]  # paged: one full page, then one
    assert listed("failed") == listed("cancelled") == []
    client.post(f"/v1/sweeps/{long}/cancel")
    client.post(f"/v1/sweeps/{waiting}/cancel")
    _wait(client, long, {"cancelled"})
    assert listed("cancelled") == [waiting, long]
    assert listed("running", "queued") == []
    # a member job deleted: the sweep still lists, with what GET reports
    client.delete(f"/v1/jobs/{finished['members'][0]['job_id']}")
    item = next(s for s in _all(client, status=["succeeded"]) if s["id"] == done)
    again = client.get(f"/v1/sweeps/{done}").json()
    assert item["status"] == again["status"] and item["progress"] == again["progress"]
    assert sum(item["verdicts"].values()) == 1


@pytest.mark.integration
def test_the_list_and_its_status_filter_on_postgres(
        make_client: Callable[..., TestClient], postgres: PostgresServer) -> None:
    client = make_client(database_url=postgres.create_database())
    made = [_sweep(client, f"pg {i}", seeds=1 + i % 2)["id"] for i in range(5)]
    client.post(f"/v1/sweeps/{made[1]}/cancel")
    client.post(f"/v1/sweeps/{made[3]}/cancel")
    listed = _all(client)
    assert [s["id"] for s in listed] == made[::-1]
    for item in listed:
        full = client.get(f"/v1/sweeps/{item['id']}").json()
        assert (item["status"], item["progress"]) == (full["status"], full["progress"])
    assert [s["id"] for s in _all(client, status=["cancelled"])] == [made[3], made[1]]
    assert [s["id"] for s in _all(client, status=["queued"])] == [made[4], made[2], made[0]]
    assert client.get("/v1/sweeps?cursor=bm90LWpzb24").status_code == 422


def test_a_failed_member_makes_the_sweep_failed_in_the_list_and_the_filter(
        client: TestClient) -> None:
    """A member failed (the moves a worker makes when it cannot run a job): the sweep is
    `running` while another member is queued, `failed` once the rest is cancelled."""
    sweep = _sweep(client, "one fails", seeds=3)
    other = _sweep(client, "untouched")["id"]
    failing = sweep["members"][0]["job_id"]
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with factory() as session:
        assert move_job(session, failing, "running", started_at=utcnow()) is not None
        assert move_job(session, failing, "failed", finished_at=utcnow(),
                        error="test: the worker could not run it") is not None
        session.commit()

    def check(expected: str) -> None:
        item = next(s for s in _all(client) if s["id"] == sweep["id"])
        full = client.get(f"/v1/sweeps/{sweep['id']}").json()
        assert item["status"] == full["status"] == expected
        assert item["progress"] == full["progress"]
        assert [s["id"] for s in _all(client, status=[expected])] == [sweep["id"]]
        assert [s["id"] for s in _all(client, status=["queued"])] == [other]

    check("running")  # failed + queued: unfinished
    client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    check("failed")  # failed + cancelled


def test_members_false_gets_the_sweep_as_the_list_shows_it(client: TestClient) -> None:
    """`GET /v1/sweeps/{id}?members=false`: no members, no spec; status, progress, member
    count and verdict counts equal to the list item's and the full GET's; cheap to poll."""
    sweep = _sweep(client, "polled", seeds=3)
    sid = sweep["id"]
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with factory() as session:  # one member finished with a verdict, the others queued
        job_id = sweep["members"][1]["job_id"]
        assert move_job(session, job_id, "running", started_at=utcnow()) is not None
        assert move_job(session, job_id, "succeeded", finished_at=utcnow(),
                        verdict="exploding", stop_reason="explosion") is not None
        session.commit()
    r = client.get(f"/v1/sweeps/{sid}", params={"members": "false"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    light = r.json()
    full = client.get(f"/v1/sweeps/{sid}").json()
    assert "members" not in light and "spec" not in light
    assert light == next(s for s in _all(client) if s["id"] == sid)
    assert (light["status"], light["progress"]) == (full["status"], full["progress"])
    assert light["status"] == "running" and light["progress"]["members_done"] == 1
    assert light["member_count"] == len(full["members"]) == 3
    assert light["verdicts"] == {"exploding": 1}
    assert client.get(f"/v1/sweeps/{sid}", params={"members": "true"}).json() == full
    # as cheap as a list page: one aggregate query over the member rows, none row by row
    with counting_statements(client) as statements:
        client.get(f"/v1/sweeps/{sid}?members=0")
    over_members = [s for s in statements if "sweep_members" in s]
    assert len(over_members) == 1 and "GROUP BY" in over_members[0], statements
    assert client.get("/v1/sweeps/00000000-0000-0000-0000-000000000000?members=false"
                      ).status_code == 404


@pytest.mark.parametrize("value", ["maybe", "", "False!", "2"])
def test_a_bad_members_value_is_a_422_problem_naming_it(client: TestClient, value: str) -> None:
    sid = _sweep(client, "bad option")["id"]
    r = client.get(f"/v1/sweeps/{sid}", params={"members": value})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    problem = r.json()
    assert [e["loc"] for e in problem["errors"]] == [["query", "members"]], problem
    assert "bool" in problem["errors"][0]["msg"].lower(), problem


def test_the_members_option_is_documented(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/sweeps/{sweep_id}"]["get"]
    (param,) = [p for p in op["parameters"] if p["name"] == "members"]
    assert param["in"] == "query" and not param.get("required")
    assert param["schema"]["type"] == "boolean" and param["schema"]["default"] is True
    assert "listSweeps" in param["description"]
    assert "422" in op["responses"]
    assert {"$ref": "#/components/schemas/SweepSummary"} in (
        op["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"])


def test_the_jobs_list_leaves_sweep_members_out_when_asked(client: TestClient) -> None:
    """GET /v1/jobs?sweep_members=false: no member of a sweep on any page (a 64-member sweep
    would otherwise fill the list); by default they are listed, with their sweep's id."""
    sweep = _sweep(client, "members", seeds=3)
    member_ids = {m["job_id"] for m in sweep["members"]}
    alone = client.post("/v1/jobs", json=TINY).json()["id"]
    every = []
    cursor = None
    while True:  # page by page (limit 1): the filter holds across the cursor
        q: dict[str, Any] = {"limit": 1, "sweep_members": "false",
                             **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=q).json()
        every += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = {j["id"] for j in every}
    assert alone in ids and not ids & member_ids
    assert all(j["parent_sweep_id"] is None for j in every)
    listed = client.get("/v1/jobs", params={"limit": 200}).json()["items"]
    assert member_ids <= {j["id"] for j in listed}
    assert {j["parent_sweep_id"] for j in listed if j["id"] in member_ids} == {sweep["id"]}
    bad = client.get("/v1/jobs", params={"sweep_members": "maybe"})
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM
    assert bad.json()["errors"][0]["loc"] == ["query", "sweep_members"]
