"""The client's sweep list and launch (sync, async, `gradwatch sweep list|launch`), end to end
against a real server with real worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from client import ApiError, AsyncClient, Client, Job, Sweep, SweepPage, SweepSummary
from client.cli import EXIT
from client.cli_sweeps import member_choice, patch_json
from tests.conftest import SWEEP_AXES, SWEEP_SPEC_SMALL, LiveServer

pytestmark = pytest.mark.timeout(240)

GRADWATCH = str(Path(sys.executable).parent / "gradwatch")



@pytest.fixture(scope="module")
def finished(gw: Client) -> Sweep:
    sweep = gw.wait_sweep(gw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES, name=f"launch {uuid.uuid4()}").id,
                          timeout=150)
    assert sweep.status == "succeeded", sweep
    return sweep


def gradwatch(live: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRADWATCH_URL": live.url, "COLUMNS": "220"}
    env.pop("GRADWATCH_API_KEY", None)
    return subprocess.run([GRADWATCH, *args], capture_output=True, text=True, env=env,
                          timeout=150)


def _every_page(gw: Client, **kw: Any) -> list[SweepSummary]:
    items: list[SweepSummary] = []
    cursor = None
    while True:
        page = gw.list_sweeps(limit=2, cursor=cursor, **kw)
        assert isinstance(page, SweepPage)
        items += page.items
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


def test_submit_sweep_with_a_key_twice_is_one_sweep(gw: Client, live: LiveServer) -> None:
    key = f"k-{uuid.uuid4()}"
    name = f"keyed {key}"
    first = gw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES, name=name, idempotency_key=key)
    again = gw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES, name=name, idempotency_key=key)
    assert again.id == first.id
    assert [m.job_id for m in again.members] == [m.job_id for m in first.members]
    assert [s.id for s in _every_page(gw) if s.name == name] == [first.id]
    with pytest.raises(ApiError) as info:
        gw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES[:1], name=name, idempotency_key=key)
    assert info.value.status == 422
    gw.wait_sweep(first.id, timeout=150)


def test_list_sweeps_pages_and_filters_as_the_api(gw: Client, live: LiveServer,
                                                  finished: Sweep) -> None:
    listed = _every_page(gw)
    api = live.http.get("/v1/sweeps", params={"limit": 200}).json()["items"]
    assert [s.id for s in listed] == [s["id"] for s in api]
    mine = next(s for s in listed if s.id == finished.id)
    assert mine.status == "succeeded" and mine.member_count == 4
    assert mine.progress is not None and mine.progress.members_done == 4
    assert sum(mine.verdicts.values()) == 4
    assert mine.verdicts == {v: sum(m.verdict == v for m in finished.members)
                             for v in {m.verdict for m in finished.members if m.verdict}}
    assert finished.id in {s.id for s in gw.list_sweeps(status="succeeded", limit=200).items}
    assert finished.id not in {s.id for s in gw.list_sweeps(status=["queued", "running"],
                                                            limit=200).items}
    with pytest.raises(ApiError) as info:
        gw.list_sweeps(cursor="not-a-cursor")
    assert info.value.status == 422


def test_launch_sweep_recommended_with_a_patch_trains(gw: Client, finished: Sweep) -> None:
    grid = gw.stability(finished.id)
    rec = grid.model_dump()["recommended"]
    assert rec is not None
    job = gw.launch_sweep(finished.id, spec_patch={"training": {"epochs": 3}})
    assert isinstance(job, Job) and job.status == "queued"
    assert job.launched_from is not None
    assert job.launched_from["member"] == rec["index"] and job.launched_from["recommended"]
    member_spec = gw.get(rec["job_id"]).spec
    assert member_spec is not None and job.spec is not None
    assert job.spec == {**member_spec, "training": {**member_spec["training"], "epochs": 3}}
    done = gw.wait(job.id, timeout=120)
    assert done.status == "succeeded" and done.launched_from == job.launched_from
    assert gw.sweep(finished.id).model_dump(mode="json") == finished.model_dump(mode="json")
    # one key, one job
    key = f"k-{uuid.uuid4()}"
    a = gw.launch_sweep(finished.id, member=1, name="again", idempotency_key=key)
    b = gw.launch_sweep(finished.id, member=1, name="again", idempotency_key=key)
    assert a.id == b.id and a.name == "again" and a.launched_from is not None
    assert a.launched_from["member"] == 1 and a.launched_from["recommended"] is False


def test_launch_sweep_errors_are_api_errors(gw: Client, finished: Sweep) -> None:
    with pytest.raises(ApiError) as info:
        gw.launch_sweep(finished.id, member=99)
    assert info.value.status == 422 and "member 99" in str(info.value)
    with pytest.raises(ApiError) as info:
        gw.launch_sweep(str(uuid.uuid4()))
    assert info.value.status == 404


def test_the_async_client_lists_and_launches(live: LiveServer, finished: Sweep) -> None:
    async def run() -> tuple[SweepPage, Job]:
        async with AsyncClient(live.url) as agw:
            page = await agw.list_sweeps(limit=200, status="succeeded")
            job = await agw.launch_sweep(finished.id, member=0, name="async launch")
            return page, job

    page, job = asyncio.run(run())
    assert finished.id in {s.id for s in page.items}
    assert job.name == "async launch" and job.launched_from is not None
    assert job.launched_from["sweep_id"] == finished.id and job.launched_from["member"] == 0


def test_cli_parsers() -> None:
    assert member_choice("recommended") == "recommended" and member_choice("3") == 3
    assert patch_json('{"training": {"epochs": 5}}') == {"training": {"epochs": 5}}
    for bad in ("-1", "best"):
        with pytest.raises(Exception, match="member index"):
            member_choice(bad)
    for bad in ("[1]", "{nope"):
        with pytest.raises(Exception, match="JSON"):
            patch_json(bad)


def test_the_cli_lists_sweeps(live: LiveServer, finished: Sweep) -> None:
    table = gradwatch(live, "sweep", "list", "--limit", "200")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if finished.id in line)
    assert "succeeded" in row and "4/4" in row
    for verdict in {m.verdict for m in finished.members if m.verdict}:
        assert verdict in row
    assert (finished.created_at or "")[:10] in row
    listed = gradwatch(live, "sweep", "list", "--status", "succeeded", "--limit", "200",
                       "--json")
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert finished.id in {s["id"] for s in items}
    assert {s["status"] for s in items} == {"succeeded"}
    queued = gradwatch(live, "sweep", "list", "--status", "queued", "--json")
    assert finished.id not in {s["id"] for s in json.loads(queued.stdout)}
    bad = gradwatch(live, "sweep", "list", "--status", "exploded")
    assert bad.returncode == EXIT["usage"] and "Traceback" not in bad.stderr


def test_the_cli_launches_and_waits(live: LiveServer, finished: Sweep, tmp_path: Path) -> None:
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"training": {"epochs": 3}}))
    result = gradwatch(live, "sweep", "launch", finished.id, "--patch", f"@{patch}", "--wait")
    assert result.returncode == 0, result.stderr
    found = re.search(r"launched job ([0-9a-f-]{36}) like the recommended member (\d+)",
                      result.stderr)
    assert found, result.stderr
    job_id, member = found.group(1), int(found.group(2))
    assert f"job {job_id} succeeded" in result.stdout
    job = live.http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["spec"]["training"]["epochs"] == 3
    assert job["launched_from"]["member"] == member
    assert job["launched_from"]["spec_patch"] == {"training": {"epochs": 3}}

    plain = gradwatch(live, "sweep", "launch", finished.id, "--member", "2", "--patch",
                      '{"training": {"epochs": 1}}', "--name", "cli member 2")
    assert plain.returncode == 0, plain.stderr
    new_id = plain.stdout.strip()
    job = live.http.get(f"/v1/jobs/{new_id}").json()
    assert job["name"] == "cli member 2" and job["launched_from"]["member"] == 2
    assert job["spec"]["training"]["epochs"] == 1
    as_json = gradwatch(live, "sweep", "launch", finished.id, "--member", "0", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["launched_from"]["member"] == 0

    wrong = gradwatch(live, "sweep", "launch", finished.id, "--member", "99")
    assert wrong.returncode == EXIT["error"] and "422" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    bad_patch = gradwatch(live, "sweep", "launch", finished.id, "--patch", "{oops")
    assert bad_patch.returncode == EXIT["usage"] and "--patch" in bad_patch.stderr
