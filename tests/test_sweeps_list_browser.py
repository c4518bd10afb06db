"""The dashboard home's list of recent sweeps (GET /v1/sweeps), in a real headless browser
(fixtures of tests/test_browser.py): each sweep links to its page; with keys, the page sends
the key it asked for and a tenant sees its own sweeps only; nothing leaves the host."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.cli import create_key
from tests.conftest import SMALL_SPEC, LiveServer, make_settings
from tests.test_browser import Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(180)

ADMIN = "browser-admin-key-123"
TINY: dict[str, Any] = {**SMALL_SPEC, "training": {"epochs": 1, "batch_size": 60}}


def test_the_home_page_lists_a_tenants_sweeps_and_links_to_the_sweep_page(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    settings = make_settings(tmp_path, workers=0, api_key=ADMIN)  # members stay queued
    with LiveServer(settings) as server:
        key = create_key(settings, "team-a").key
        body = {"spec": TINY, "axes": [{"path": "seed", "values": [0, 1, 2]}]}
        own = server.http.post("/v1/sweeps", json={**body, "name": "team-a's seeds"},
                               headers={"X-API-Key": key}).json()
        other = server.http.post("/v1/sweeps", json={**body, "name": "admin's seeds"},
                                 headers={"X-API-Key": ADMIN}).json()
        p = open_page(server.url)
        page = p.goto("/")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        row = page.locator(f'#sweep-rows tr[data-sweep-id="{own["id"]}"]')
        row.wait_for()
        cells = [row.locator("td").nth(i).inner_text() for i in range(6)]
        assert cells[:4] == ["team-a's seeds", "queued", "0 / 3 done · 0% of steps", "3"]
        assert cells[5]  # the creation time, in the browser's locale
        time.sleep(0.3)
        assert page.locator(f'tr[data-sweep-id="{other["id"]}"]').count() == 0
        assert "admin's seeds" not in page.locator("#sweeps").inner_text()

        row.locator("a.sweep-link").click()
        page.wait_for_url(f"**/sweeps/{own['id']}")
        page.get_by_role("heading", name="team-a's seeds").wait_for()
        page.wait_for_function(
            "() => /queued: 0 \\/ 3/.test(document.querySelector('#sweep-status')?.textContent)")
        api_calls = [u for u, _ in p.requests if "/v1/sweeps" in u]
        assert any(u.endswith("/v1/sweeps?limit=20") for u in api_calls)
        assert all(key not in u for u, _ in p.requests)
        assert p.external == []
        # the first request, before the key was asked for, is the one 401 (then one prompt)
        assert [e for e in p.errors if "status of 401" not in e] == []
        assert len(p.errors) == 1


def test_a_finished_sweep_shows_its_verdicts_on_the_home_page(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    sweep = live.http.post("/v1/sweeps", json={
        "name": "finished seeds", "spec": TINY,
        "axes": [{"path": "seed", "values": [0, 1]}]}).json()
    deadline = time.monotonic() + 120
    while sweep["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, sweep["progress"]
        time.sleep(0.2)
        sweep = live.http.get(f"/v1/sweeps/{sweep['id']}").json()
    assert sweep["status"] == "succeeded"
    p = open_page(live.url)
    page = p.goto("/")
    row = page.locator(f'#sweep-rows tr[data-sweep-id="{sweep["id"]}"]')
    row.wait_for()
    text = row.inner_text()
    assert "succeeded" in text and "2 / 2 done · 100% of steps" in text
    for verdict in {m["verdict"] for m in sweep["members"]}:
        assert verdict in text
    row.locator("a.sweep-link").click()
    page.wait_for_url(f"**/sweeps/{sweep['id']}")
    page.locator("#sweep-status").get_by_text("succeeded: 2 / 2 members done").wait_for()
    assert p.external == [] and p.errors == []


def test_the_jobs_list_shows_sweep_members_only_when_asked(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """A sweep's members (queued: no workers) are not in the home page's job list until "sweep
    members" is ticked; then each links to its sweep, and the choice is kept in the URL."""
    with LiveServer(make_settings(tmp_path, workers=0)) as server:
        sweep = server.http.post("/v1/sweeps", json={
            "name": "three seeds", "spec": TINY,
            "axes": [{"path": "seed", "values": [0, 1, 2]}]}).json()
        alone = server.http.post("/v1/jobs", json={**TINY, "name": "on its own"}).json()
        members = [m["job_id"] for m in sweep["members"]]
        p = open_page(server.url)
        page = p.goto("/")
        page.locator(f'#job-rows tr[data-job-id="{alone["id"]}"]').wait_for()
        page.locator(f'#sweep-rows tr[data-sweep-id="{sweep["id"]}"]').wait_for()
        assert page.locator("#job-rows tr").count() == 1  # the members are left out
        page.check("#filter-sweep-members")
        page.wait_for_url("**/?sweep_members=1")
        row = page.locator(f'#job-rows tr[data-job-id="{members[1]}"]')
        row.wait_for()
        assert page.locator("#job-rows tr").count() == 4
        link = row.locator("a.member-sweep-link")
        assert link.inner_text() == sweep["id"][:8]
        assert link.get_attribute("href") == f"/sweeps/{sweep['id']}"
        assert page.locator(f'#job-rows tr[data-job-id="{alone["id"]}"] a.member-sweep-link'
                            ).count() == 0
        page.reload()  # the choice is in the URL
        page.locator(f'#job-rows tr[data-job-id="{members[0]}"]').wait_for()
        assert page.locator("#filter-sweep-members").is_checked()
        link.click()
        page.wait_for_url(f"**/sweeps/{sweep['id']}")
        assert p.external == [] and p.errors == []
