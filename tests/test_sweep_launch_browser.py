"""The sweep page's "Launch this setting" button and its grid's row order, in a real headless
browser (fixtures of tests/test_browser.py): the button launches the recommended member as a
new job (with the key the page asked for) and opens that job's page; the HTML grid puts the
largest y value on top, as the PNG map does; nothing leaves the host."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.cli import create_key
from tests.conftest import LiveServer, make_settings
from tests.test_browser import Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)

SWEEP_2X3 = {
    "name": "launch from the page",
    "spec": {"seed": 0, "data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
             "model": {"hidden": [{"units": 16}] * 4, "init": {"scheme": "normal", "std": 0.3}},
             "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
             "training": {"epochs": 2, "batch_size": 32}},
    "axes": [{"path": "model.init.std", "values": [0.1, 0.3, 3.0]},
             {"path": "optimizer.lr", "values": [0.001, 1.0]}],
}


def _finished(http: Any, body: dict[str, Any], headers: dict[str, str] | None = None
              ) -> dict[str, Any]:
    r = http.post("/v1/sweeps", json=body, headers=headers)
    assert r.status_code == 202, r.text
    sweep: dict[str, Any] = r.json()
    deadline = time.monotonic() + 150
    while sweep["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, sweep["progress"]
        time.sleep(0.3)
        sweep = http.get(f"/v1/sweeps/{sweep['id']}", headers=headers).json()
    assert sweep["status"] == "succeeded", sweep
    return sweep


def _rows_of_links(page: Any) -> list[list[str]]:
    rows = page.locator("#stability-grid tbody tr")
    return [[a.get_attribute("href") for a in rows.nth(r).locator("a.member-link").all()]
            for r in range(rows.count())]


def test_the_grid_puts_the_largest_y_on_top_and_the_button_launches_the_recommended(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    sweep = _finished(live.http, SWEEP_2X3)
    grid = live.http.get(f"/v1/sweeps/{sweep['id']}/stability").json()
    rec = grid["recommended"]
    assert rec is not None, grid["recommended_reason"]
    assert grid["y"] == "model.init.std" and grid["y_values"] == [0.1, 0.3, 3.0]
    p = open_page(live.url)
    page = p.goto(f"/sweeps/{sweep['id']}")
    button = page.locator("#sweep-recommended button#launch-recommended")
    button.wait_for()
    assert button.inner_text() == "Launch this setting"

    # rows top to bottom: init std 3.0, 0.3, 0.1 (the PNG map's order); columns lr ascending
    by_values = {(m["values"]["model.init.std"], m["values"]["optimizer.lr"]):
                 f"/jobs/{m['job_id']}" for m in sweep["members"]}
    expected = [[by_values[(y, x)] for x in grid["x_values"]] for y in (3.0, 0.3, 0.1)]
    assert _rows_of_links(page) == expected
    headers = page.locator("#stability-grid tbody th").all_inner_texts()
    assert [float(t) for t in headers] == [3.0, 0.3, 0.1]

    before = {j["id"] for j in live.http.get("/v1/jobs", params={"limit": 200}).json()["items"]}
    button.click()
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    assert job_id not in before
    job = live.http.get(f"/v1/jobs/{job_id}").json()
    assert job["launched_from"] == {
        "sweep_id": sweep["id"], "member": rec["index"], "job_id": rec["job_id"],
        "values": rec["values"], "recommended": True, "spec_patch": None}
    assert job["parent_sweep_id"] is None
    member_spec = live.http.get(f"/v1/jobs/{rec['job_id']}").json()["spec"]
    assert job["spec"] == member_spec
    # the job page says where it came from
    link = page.locator("#launched-from-link")
    link.wait_for()
    assert link.get_attribute("href") == f"/sweeps/{sweep['id']}"
    assert f"launched like member {rec['index']} of sweep" in page.locator("main").inner_text()
    # the sweep is unchanged: still its own members only
    after = live.http.get(f"/v1/sweeps/{sweep['id']}").json()
    assert after["members"] == sweep["members"] and after["progress"] == sweep["progress"]
    posts = [u for u, _ in p.requests if u.endswith(f"/v1/sweeps/{sweep['id']}/launch")]
    assert len(posts) == 1
    assert p.external == [] and p.errors == []


def test_the_button_sends_the_key_the_page_asked_for(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    settings = make_settings(tmp_path, workers=2, api_key="browser-admin-key-456",
                             max_job_runtime_seconds=120)
    with LiveServer(settings) as server:
        key = create_key(settings, "team-a").key
        sweep = _finished(server.http, SWEEP_2X3, headers={"X-API-Key": key})
        p = open_page(server.url)
        page = p.goto(f"/sweeps/{sweep['id']}")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        page.locator("#launch-recommended").click()
        page.wait_for_url("**/jobs/*")
        job_id = page.url.rsplit("/", 1)[1]
        job = server.http.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key}).json()
        assert job["tenant"] == "team-a" and job["launched_from"]["sweep_id"] == sweep["id"]
        launch = [h for u, h in p.requests if u.endswith("/launch")]
        assert len(launch) == 1 and launch[0].get("x-api-key") == key
        assert launch[0].get("idempotency-key", "").startswith("page-")
        assert all(key not in u for u, _ in p.requests)
        assert p.external == []
        assert [e for e in p.errors if "status of 401" not in e] == []
