"""The sweep page's refresh loop, in a real headless browser (fixtures of tests/test_browser.py):
while a sweep runs and nothing the page shows changes, the page polls only the sweep's light
form (`?members=false`), never the whole sweep nor its grid; when a member finishes it reads
the whole sweep and the grid shows that member; once the sweep ended it shows the final grid,
recommendation and map and stops polling; nothing leaves the host."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import LiveServer
from tests.test_browser import Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)

PERIOD = 2.0  # the page's refresh period (sweep.js), in seconds

# Two members that train far longer than the test watches them (until cancelled), each on
# its own worker: their batch sizes differ, so no worker trains them as one stack (a stack's
# members finish together, when its longest ends).
RUNNING_1X2 = {
    "name": "polled page",
    "spec": {"seed": 0, "data": {"source": "synthetic", "name": "spirals", "n_samples": 400},
             "model": {"hidden": [{"units": 16}] * 2, "init": {"scheme": "normal", "std": 0.3}},
             "optimizer": {"name": "sgd", "lr": 0.001},
             "training": {"epochs": 5000, "batch_size": 8, "validation_split": 0.0},
             "monitor": {"stop_on_explosion": False}},
    "axes": [{"path": "model.init.std", "values": [0.3]},
             {"path": "training.batch_size", "values": [8, 16]}],
}


class SweepRequests:
    """The page's requests of one sweep's resources, each with when it was made."""

    def __init__(self, page: Any, sweep_id: str) -> None:
        self.path = f"/v1/sweeps/{sweep_id}"
        self.made: list[tuple[float, str]] = []
        page.on("request", self._record)

    def _record(self, request: Any) -> None:
        url = urlsplit(request.url)
        if url.path.startswith(self.path):
            self.made.append((time.monotonic(), url.path[len(self.path):] + "?" + url.query))

    def since(self, start: float) -> list[str]:
        """What was requested since ``start``: "?members=false" (the light form), "?" (the
        whole sweep), "/stability?..." (the grid), "/plots/stability?..." (the map)."""
        return [what for at, what in self.made if at >= start]


def _watch(page: Any, seconds: float) -> None:
    page.wait_for_timeout(seconds * 1000)


def _cells(page: Any) -> dict[str, str]:
    """Member job link -> the label its grid cell shows."""
    return {str(a.get_attribute("href")): a.inner_text()
            for a in page.locator("#stability-grid a.member-link").all()}


def _sweep(live: LiveServer, sweep_id: str) -> dict[str, Any]:
    sweep: dict[str, Any] = live.http.get(f"/v1/sweeps/{sweep_id}").json()
    return sweep


def test_a_running_sweeps_page_polls_the_light_form_and_reads_the_sweep_when_members_finish(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    r = live.http.post("/v1/sweeps", json=RUNNING_1X2)
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    deadline = time.monotonic() + 60
    while {m["status"] for m in _sweep(live, sid)["members"]} != {"running"}:
        assert time.monotonic() < deadline, "the members never started"
        time.sleep(0.1)

    p = open_page(live.url)
    requests = SweepRequests(p.page, sid)
    page = p.goto(f"/sweeps/{sid}")
    page.locator("#sweep-waiting").wait_for()
    status = page.locator("#sweep-status")
    page.wait_for_function("() => document.getElementById('sweep-status').textContent"
                           " === 'running: 0 / 2 members done'")
    assert requests.since(0)[:2] == ["?members=false", "?"]  # the light form, then the sweep

    # members run (their steps grow), none finished: only the light form, again and again
    start = time.monotonic()
    _watch(page, 3.25 * PERIOD)
    polled = requests.since(start)
    assert polled and set(polled) == {"?members=false"}, polled
    assert len(polled) >= 2, polled
    assert _sweep(live, sid)["progress"]["members_done"] == 0
    assert page.locator("#sweep-waiting").is_visible()

    # a member finishes: the page reads the whole sweep and the grid shows that member
    sweep = _sweep(live, sid)
    assert [m["status"] for m in sweep["members"]] == ["running", "running"]
    member = sweep["members"][0]
    start = time.monotonic()
    assert live.http.post(f"/v1/jobs/{member['job_id']}/cancel").status_code == 202
    link = f"/jobs/{member['job_id']}"
    finished = live.http.get(f"/v1/jobs/{member['job_id']}").json()
    deadline = time.monotonic() + 60
    while finished["status"] != "cancelled":
        assert time.monotonic() < deadline, finished["status"]
        time.sleep(0.1)
        finished = live.http.get(f"/v1/jobs/{member['job_id']}").json()
    label = finished["verdict"] or finished["status"]
    page.wait_for_function("([href, label]) => [...document.querySelectorAll("
                           "'#stability-grid a.member-link')].some((a) =>"
                           " a.getAttribute('href') === href && a.textContent === label)",
                           arg=[link, label])
    assert status.inner_text() == "running: 1 / 2 members done"
    cells = _cells(page)
    assert cells == {link: label}, cells  # the grid of the finished members
    after = requests.since(start)
    assert "?" in after and after[0] == "?members=false", after
    assert after.count("?") <= 2, after

    # nothing changes again: the light form only, neither the sweep nor its grid
    start = time.monotonic()
    _watch(page, 3.25 * PERIOD)
    polled = requests.since(start)
    assert polled and set(polled) == {"?members=false"}, polled
    assert len(polled) >= 2, polled
    assert _sweep(live, sid)["progress"]["members_done"] == 1

    # the sweep ends: its final grid, recommendation and map, as the API has them
    assert live.http.post(f"/v1/sweeps/{sid}/cancel").status_code == 202
    sweep = live.wait_sweep(sid, timeout=60)
    assert sweep["status"] == "cancelled"
    page.wait_for_function("() => document.getElementById('sweep-status').textContent"
                           " === 'cancelled: 2 / 2 members done'")
    page.wait_for_function("() => { const i = document.getElementById('stability-plot');"
                           " return i.dataset.query === 'x=training.batch_size&y=model.init.std'"
                           " && i.complete && i.naturalWidth > 0; }")
    assert _cells(page) == {f"/jobs/{m['job_id']}": m["verdict"] or m["status"]
                            for m in sweep["members"]}
    grid = live.http.get(f"/v1/sweeps/{sid}/stability").json()
    line = page.locator("#sweep-recommended").inner_text()
    if grid["recommended"] is None:
        assert line == f"No recommendation: {grid['recommended_reason']}.", line
    else:
        assert line.startswith("Recommended") and grid["recommended"]["reason"] in line, line
        assert page.locator("#launch-recommended").is_enabled()

    # and stops polling
    start = time.monotonic()
    _watch(page, 2.25 * PERIOD)
    assert requests.since(start) == []
    assert p.external == [] and p.errors == [], (p.external, p.errors)
