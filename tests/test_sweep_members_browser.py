"""The page of a sweep over one axis, in a real headless browser (fixtures of
tests/test_browser.py): there is no stability map, but its members are there to read."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import LiveServer
from tests.test_browser import SWEEP_2X2, Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)

LR_SWEEP = {"name": "learning rate only", "spec": SWEEP_2X2["spec"],
            "axes": [{"path": "optimizer.lr", "values": [0.001, 0.1, 10.0]}]}


def test_a_one_axis_sweep_lists_its_members_with_their_verdicts_and_jobs(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """A learning-rate sweep (the form allows one axis) ended on a page saying only "A
    stability map needs two axes": which rate exploded, and the members' jobs (hidden from the
    job list), were nowhere to be seen."""
    sweep = live.http.post("/v1/sweeps", json=LR_SWEEP).json()
    deadline = time.monotonic() + 150
    while sweep["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, sweep["progress"]
        time.sleep(0.3)
        sweep = live.http.get(f"/v1/sweeps/{sweep['id']}").json()
    assert sweep["status"] == "succeeded"
    p = open_page(live.url)
    page = p.goto(f"/sweeps/{sweep['id']}")
    rows = page.locator("#sweep-members tbody tr")
    rows.first.wait_for()
    assert rows.count() == 3
    for k, member in enumerate(sweep["members"]):
        row = rows.nth(k)
        assert row.locator("th").inner_text() == ["0.001", "0.1", "10"][k]
        link = row.locator("a.member-link")
        assert link.get_attribute("href") == f"/jobs/{member['job_id']}"
        assert link.inner_text() == member["verdict"]
    assert "exploding" in rows.nth(2).inner_text()  # lr 10 on unscaled spirals
    page.locator("#sweep-members a.member-link").last.click()
    page.wait_for_url(f"**/jobs/{sweep['members'][2]['job_id']}")
    assert p.external == [] and p.errors == []
