"""The client's sweeps (stability maps), sync, async and the `gradwatch sweep` commands, end to
end against a real server with real worker processes."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from matplotlib import image as mpimg

from client import ApiError, AsyncClient, Client, Event, StabilityMap, Sweep, SweepMember
from client.cli import EXIT
from client.cli_sweeps import axis_value, log_axis, values_axis
from tests.conftest import LONG_SPEC, SWEEP_AXES, SWEEP_SPEC_SMALL, LiveServer

pytestmark = pytest.mark.timeout(180)

GRADWATCH = str(Path(sys.executable).parent / "gradwatch")

# A few dozen steps of a small deep net: a wide init at a large learning rate explodes.


def assert_png(data: bytes) -> tuple[int, int]:
    """A PNG that decodes; its (height, width)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(io.BytesIO(data), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels.shape[0], pixels.shape[1]


def assert_svg(data: bytes) -> None:
    root = ET.fromstring(data)
    assert root.tag.endswith("svg"), root.tag


def same(a: Sweep, b: Sweep) -> bool:
    """Equal as the API gave them (a NaN final loss equals itself)."""
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def assert_grid_matches_members(grid: StabilityMap, sweep: Sweep) -> None:
    """Every cell of the map holds the verdict of the member at its values."""
    assert len(grid.verdict) == len(grid.y_values)
    assert all(len(row) == len(grid.x_values) for row in grid.verdict)
    for m in sweep.members:
        assert grid.verdict_at(m.values[grid.x], m.values[grid.y]) == m.verdict, m


def test_a_sweep_is_submitted_followed_read_and_mapped(gw: Client, tmp_path: Path) -> None:
    submitted = gw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES, name="std x lr")
    # four tiny members may all have finished by the time the answer is written
    assert submitted.status in ("queued", "running", "succeeded")
    assert submitted.name == "std x lr"
    assert submitted.paths == ["model.init.std", "optimizer.lr"]
    assert len(submitted.members) == 4 and submitted.progress is not None
    assert submitted.progress.members == 4

    events = list(gw.follow_sweep(submitted.id))
    # ends at the terminal `status` event, or at once when the snapshot is terminal already
    assert events[0].event == "snapshot" and events[-1].terminal
    assert events[-1].data["status"] == "succeeded"
    assert all(not e.terminal for e in events[:-1])
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    last = events[-1].id
    assert last is not None
    resumed = list(gw.follow_sweep(submitted.id, last_event_id=last))  # sends Last-Event-ID
    assert resumed[0].event != "snapshot" and resumed[0].id == last + 1

    sweep = gw.wait_sweep(submitted.id, timeout=120)
    assert same(sweep, gw.sweep(submitted.id))
    assert sweep.status == "succeeded" and sweep.terminal
    assert sweep.progress is not None and sweep.progress.members_done == 4
    assert [m.values for m in sweep.members] == [
        {"model.init.std": std, "optimizer.lr": lr} for std in (0.3, 3.0) for lr in (0.001, 0.5)]
    for m in sweep.members:
        assert m.status == "succeeded" and m.verdict is not None and m.predicted_risk
        job = gw.get(m.job_id)  # every member is a job
        assert job.verdict == m.verdict and job.stop_reason == m.stop_reason
    by_values = {(m.values["model.init.std"], m.values["optimizer.lr"]): m for m in sweep.members}
    assert by_values[(3.0, 0.5)].verdict == "exploding"
    assert by_values[(3.0, 0.5)].first_bad_step is not None

    grid = gw.stability(sweep.id)  # defaults: x the last axis, y the first
    assert (grid.x, grid.y) == ("optimizer.lr", "model.init.std")
    assert grid.x_values == [0.001, 0.5] and grid.y_values == [0.3, 3.0]
    assert_grid_matches_members(grid, sweep)
    assert [r.y for r in grid.rows] == [0.3, 3.0]
    assert grid.rows[1].smallest_exploding is not None
    assert grid.calibration["cells"] == 4
    swapped = gw.stability(sweep.id, x="model.init.std", y="optimizer.lr")
    assert swapped.x_values == [0.3, 3.0]
    assert_grid_matches_members(swapped, sweep)

    png = gw.plot_stability(sweep.id, tmp_path / "map.png")
    assert (tmp_path / "map.png").read_bytes() == png
    tall = assert_png(png)
    assert_png(gw.plot_stability(sweep.id, x="model.init.std", y="optimizer.lr"))
    assert tall[0] > 0
    svg = gw.plot_stability(sweep.id, tmp_path / "map.svg")
    assert_svg(svg)
    assert_svg(gw.plot_stability(sweep.id, format="svg"))

    with pytest.raises(ApiError) as info:
        gw.stability(sweep.id, x="optimizer.momentum")
    assert info.value.status == 422 and "not an axis" in info.value.detail
    with pytest.raises(ApiError) as info:
        gw.cancel_sweep(sweep.id)  # every member has finished
    assert info.value.status == 409 and info.value.title

    gw.delete_sweep(sweep.id)
    with pytest.raises(ApiError) as info:
        gw.sweep(sweep.id)
    assert info.value.status == 404 and info.value.title
    with pytest.raises(ApiError) as info:
        gw.get(sweep.members[0].job_id)
    assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        gw.plot_stability(sweep.id)
    assert info.value.status == 404


def test_a_running_sweep_is_cancelled_then_deleted(gw: Client) -> None:
    sweep = gw.submit_sweep(LONG_SPEC, [{"path": "seed", "values": [0, 1]}])
    with pytest.raises(ApiError) as info:
        gw.delete_sweep(sweep.id)  # members still queued or running
    assert info.value.status == 409 and info.value.title
    with pytest.raises(ApiError) as info:
        gw.stability(sweep.id)  # one axis: no map
    assert info.value.status == 422
    cancelled = gw.cancel_sweep(sweep.id)
    assert cancelled.id == sweep.id
    done = gw.wait_sweep(sweep.id, timeout=60, poll=0.1)
    assert done.status == "cancelled"
    assert {m.status for m in done.members} == {"cancelled"}
    with pytest.raises(ApiError) as info:
        gw.cancel_sweep(sweep.id)
    assert info.value.status == 409 and info.value.title and sweep.id in info.value.detail
    gw.delete_sweep(sweep.id)
    with pytest.raises(ApiError) as info:
        gw.delete_sweep(sweep.id)
    assert info.value.status == 404


def test_wait_sweep_times_out_with_the_progress(gw: Client) -> None:
    sweep = gw.submit_sweep(LONG_SPEC, [{"path": "seed", "values": [0, 1]}])
    try:
        with pytest.raises(TimeoutError, match="members done"):
            gw.wait_sweep(sweep.id, timeout=0.3, poll=0.1)
    finally:
        gw.cancel_sweep(sweep.id)
        gw.wait_sweep(sweep.id, timeout=60)
        gw.delete_sweep(sweep.id)


def test_a_bad_axis_is_a_problem_with_the_field(gw: Client) -> None:
    with pytest.raises(ApiError) as info:
        gw.submit_sweep(SWEEP_SPEC_SMALL, [{"path": "optimizer.lr", "log_range": [0.0, 1.0], "points": 3}])
    assert info.value.status == 422 and info.value.errors
    assert any("axes" in e.path for e in info.value.errors), info.value.errors


def test_the_async_client_sweeps(live: LiveServer, tmp_path: Path) -> None:
    async def scenario() -> tuple[Sweep, Sweep, list[Event], StabilityMap, bytes]:
        async with AsyncClient(live.url) as agw:
            sweep = await agw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES, name="async")
            events = [e async for e in agw.follow_sweep(sweep.id)]
            done = await agw.wait_sweep(sweep.id, timeout=120)
            again = await agw.sweep(sweep.id)
            grid = await agw.stability(sweep.id)
            png = await agw.plot_stability(sweep.id, tmp_path / "a.png")
            await agw.delete_sweep(sweep.id)
            return done, again, events, grid, png

    done, again, events, grid, png = asyncio.run(scenario())
    assert done.status == "succeeded" and done.name == "async", done
    assert same(done, again)
    assert events[0].event == "snapshot" and events[-1].terminal, events
    assert events[-1].data["status"] == "succeeded"
    assert_grid_matches_members(grid, done)
    assert_png(png) and (tmp_path / "a.png").read_bytes() == png


class Recorded(httpx.HTTPTransport):
    """The real transport, keeping every request's method and URL."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, httpx.URL]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url))
        return super().handle_request(request)


class AsyncRecorded(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, httpx.URL]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url))
        return await super().handle_async_request(request)


def assert_polled_light(seen: list[tuple[str, httpx.URL]], sweep_id: str) -> None:
    """GETs of the sweep: polls without members (at least one), then one whole GET."""
    gets = [dict(u.params) for m, u in seen if m == "GET" and u.path == f"/v1/sweeps/{sweep_id}"]
    assert len(gets) >= 2 and gets[:-1] == [{"members": "false"}] * (len(gets) - 1), gets
    assert gets[-1] == {}, gets


def test_wait_sweep_polls_without_members_and_returns_the_whole_sweep(live: LiveServer) -> None:
    recorded = Recorded()
    with Client(live.url, transport=recorded) as gw:
        submitted = gw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES, name="light polls")
        sweep = gw.wait_sweep(submitted.id, timeout=120, poll=0.1)
        again = gw.sweep(submitted.id)
        gw.delete_sweep(submitted.id)
    assert_polled_light(recorded.seen[:-2], submitted.id)
    assert isinstance(sweep, Sweep) and same(sweep, again)
    assert sweep.status == "succeeded" and sweep.spec is not None
    assert sweep.progress is not None and sweep.progress.members_done == 4
    assert [m.job_id for m in sweep.members] == [m.job_id for m in submitted.members]
    assert all(m.verdict is not None for m in sweep.members)


def test_the_async_wait_sweep_polls_without_members(live: LiveServer) -> None:
    recorded = AsyncRecorded()

    async def scenario() -> tuple[Sweep, Sweep, Sweep]:
        async with AsyncClient(live.url, transport=recorded) as agw:
            submitted = await agw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES)
            done = await agw.wait_sweep(submitted.id, timeout=120, poll=0.1)
            again = await agw.sweep(submitted.id)
            await agw.delete_sweep(submitted.id)
            return submitted, done, again

    submitted, done, again = asyncio.run(scenario())
    assert_polled_light(recorded.seen[:-2], submitted.id)
    assert same(done, again) and done.terminal and len(done.members) == 4


def test_member_figures_keep_the_apis_non_finite_values() -> None:
    member = SweepMember.model_validate({
        "index": 0, "job_id": "j", "status": "succeeded", "verdict": "exploding",
        "values": {"seed": 1, "optimizer.lr": 0.5, "model.init.scheme": "he_normal",
                   "data.standardize": True},
        "peak_to_baseline": "Infinity", "final_loss": "NaN"})
    assert member.peak_to_baseline == math.inf and math.isnan(member.final_loss or 0.0)
    assert [type(v) for v in member.values.values()] == [int, float, str, bool]


def test_the_async_client_has_every_method_of_the_sync_one() -> None:
    for name, method in inspect.getmembers(Client, inspect.isfunction):
        if name.startswith("_") or name == "close":  # AsyncClient.aclose
            continue
        twin = getattr(AsyncClient, name)
        assert inspect.signature(twin).parameters.keys() == \
            inspect.signature(method).parameters.keys(), name
        streams = name.startswith("follow")  # async iterators, not coroutines
        assert inspect.iscoroutinefunction(twin) != streams, name


# ------------------------------------------------------------------------------- the CLI
def test_axis_values_parse_as_numbers_booleans_or_strings() -> None:
    assert values_axis("seed=1,2") == {"path": "seed", "values": [1, 2]}
    assert [type(v) for v in values_axis("seed=1,2")["values"]] == [int, int]
    assert values_axis("optimizer.lr=1e-3, 0.1") == {"path": "optimizer.lr",
                                                     "values": [0.001, 0.1]}
    assert values_axis("model.init.scheme=he_normal,xavier_normal")["values"] == [
        "he_normal", "xavier_normal"]
    assert axis_value("true") is True and axis_value("2.0") == 2.0
    assert log_axis("optimizer.lr=1e-3:1:8") == {"path": "optimizer.lr",
                                                 "log_range": [0.001, 1.0], "points": 8}


def gradwatch(live: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRADWATCH_URL": live.url, "COLUMNS": "200"}
    env.pop("GRADWATCH_API_KEY", None)
    return subprocess.run([GRADWATCH, *args], capture_output=True, text=True, env=env,
                          timeout=150)


@pytest.mark.parametrize("axis", [
    ["--axis", "optimizer.lr"],  # no values
    ["--axis", "=0.1,1"],  # no path
    ["--axis", "optimizer.lr=0.1,,1"],  # an empty value
    ["--axis", "optimizer.lr=0.1,inf"],
    ["--log-axis", "optimizer.lr=1e-3:1"],  # no points
    ["--log-axis", "optimizer.lr=0:1:4"],
    ["--log-axis", "optimizer.lr=a:b:c"],
])
def test_a_bad_axis_is_a_usage_error(live: LiveServer, tmp_path: Path, axis: list[str]
                                     ) -> None:
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(SWEEP_SPEC_SMALL))
    result = gradwatch(live, "sweep", "submit", str(spec), *axis)
    assert result.returncode == EXIT["usage"] == 2, result.stderr
    assert f"argument {axis[0]}" in result.stderr and "Traceback" not in result.stderr
    assert "PATH=" in result.stderr  # says what the syntax is


def test_a_sweep_without_axes_is_a_usage_error(live: LiveServer, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(SWEEP_SPEC_SMALL))
    result = gradwatch(live, "sweep", "submit", str(spec))
    assert result.returncode == 2 and "--axis" in result.stderr


def test_the_cli_submits_waits_maps_reads_and_deletes_a_sweep(live: LiveServer,
                                                              tmp_path: Path) -> None:
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(SWEEP_SPEC_SMALL))
    png = tmp_path / "map.png"
    result = gradwatch(live, "sweep", "submit", str(spec), "--axis", "seed=0,1",
                       "--log-axis", "optimizer.lr=1e-3:0.5:2", "--name", "cli sweep",
                       "--wait", "--map", str(png))
    assert result.returncode == 0, result.stderr
    found = re.search(r"sweep ([0-9a-f-]{36}) \(cli sweep\) succeeded: 4/4 members done",
                      result.stdout)
    assert found, result.stdout
    sweep_id = found.group(1)
    assert "optimizer.lr" in result.stdout and "final loss" in result.stdout  # the table
    assert f"wrote {png}" in result.stderr and "Boundary per row" in result.stdout
    assert_png(png.read_bytes())

    got = gradwatch(live, "sweep", "get", sweep_id, "--json")
    assert got.returncode == 0, got.stderr
    body = json.loads(got.stdout)
    assert body["name"] == "cli sweep" and body["status"] == "succeeded"
    values = [m["values"] for m in body["members"]]
    assert values == [{"seed": s, "optimizer.lr": lr} for s in (0, 1) for lr in (0.001, 0.5)]
    assert all(type(v["seed"]) is int for v in values)  # ints stay ints
    server = live.http.get(f"/v1/sweeps/{sweep_id}").json()
    assert [m["verdict"] for m in body["members"]] == [m["verdict"] for m in server["members"]]

    table = gradwatch(live, "sweep", "get", sweep_id)
    assert table.returncode == 0
    for m in server["members"]:
        assert m["verdict"] in table.stdout
    waited = gradwatch(live, "sweep", "wait", sweep_id)  # already finished: at once
    assert waited.returncode == 0 and "succeeded" in waited.stdout
    member_ids = {m["job_id"] for m in body["members"]}
    listed = gradwatch(live, "jobs", "--limit", "200", "--json")
    assert member_ids <= {j["id"] for j in json.loads(listed.stdout)}
    without = gradwatch(live, "jobs", "--limit", "200", "--without-sweep-members", "--json")
    assert without.returncode == 0, without.stderr
    assert not member_ids & {j["id"] for j in json.loads(without.stdout)}

    svg = tmp_path / "map.svg"
    mapped = gradwatch(live, "sweep", "map", sweep_id, str(svg), "--x", "seed",
                       "--y", "optimizer.lr", "--json")
    assert mapped.returncode == 0, mapped.stderr
    grid = json.loads(mapped.stdout)
    assert (grid["x"], grid["y"], grid["x_values"]) == ("seed", "optimizer.lr", [0, 1])
    assert_svg(svg.read_bytes())
    wrong = gradwatch(live, "sweep", "map", sweep_id, str(svg), "--x", "nope")
    assert wrong.returncode == EXIT["error"] and "422" in wrong.stderr

    cancel = gradwatch(live, "sweep", "cancel", sweep_id)
    assert cancel.returncode == EXIT["error"] and "409" in cancel.stderr
    deleted = gradwatch(live, "sweep", "delete", sweep_id)
    assert deleted.returncode == 0 and sweep_id in deleted.stderr
    gone = gradwatch(live, "sweep", "get", sweep_id)
    assert gone.returncode == EXIT["error"] and "404" in gone.stderr
    assert "Traceback" not in gone.stderr
