"""The dashboard home's "Sweep this spec" form, in a real headless browser (fixtures of
tests/test_browser.py): it starts a sweep of the spec in the textarea over the axes it was
given and opens the sweep page, which shows the map once the workers are done; a double click
or a retry after a lost answer makes one sweep (one Idempotency-Key per form fill); what the
server refuses is shown as its problem text and creates nothing; with keys, the page sends the
key it asked for; nothing leaves the host."""

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

ADMIN = "browser-admin-key-123"
TINY: dict[str, Any] = {
    "seed": 0, "data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
    "model": {"hidden": [{"units": 16}] * 4, "init": {"scheme": "normal", "std": 0.3}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 2, "batch_size": 32}}


def _fill_spec(page: Any, spec: dict[str, Any]) -> None:
    import json

    page.fill("#spec-input", json.dumps(spec))


def _row(page: Any, i: int) -> Any:
    return page.locator("#sweep-axes tr.axis-row").nth(i)


def _set_values(page: Any, i: int, path: str, values: str) -> None:
    row = _row(page, i)
    row.locator("input.axis-path").fill(path)
    row.locator("select.axis-kind").select_option("values")
    row.locator("input.axis-values").fill(values)


def _one_axis(page: Any, path: str, values: str) -> None:
    """Leave one axis: remove the second preset row, set the first."""
    _row(page, 1).locator("button.remove-axis").click()
    _set_values(page, 0, path, values)


def _sweeps_named(http: Any, name: str, headers: dict[str, str] | None = None
                  ) -> list[dict[str, Any]]:
    r = http.get("/v1/sweeps?limit=100", headers=headers)
    assert r.status_code == 200, r.text
    return [s for s in r.json()["items"] if s["name"] == name]


def _sweep_posts(p: Page) -> list[dict[str, str]]:
    return [h for u, h in p.requests if u.endswith("/v1/sweeps") and "idempotency-key" in h]


def test_the_form_starts_a_2x2_sweep_and_lands_on_its_map(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    p = open_page(live.url)
    page = p.goto("/")
    members = page.locator("#sweep-members")
    # the presets: init std x learning rate, 8 log-spaced points each
    members.get_by_text("64 members").wait_for()
    assert [_row(page, i).locator("input.axis-path").input_value() for i in range(2)] == [
        "model.init.std", "optimizer.lr"]
    assert "map x (columns)" in _row(page, 1).inner_text()
    assert page.locator("#sweep-paths option").count() == 7

    _fill_spec(page, TINY)
    _set_values(page, 0, "model.init.std", "0.3, 3")
    _row(page, 1).locator("input.axis-points").fill("2")  # the log range 1e-3..1, 2 points
    members.get_by_text("4 members").wait_for()
    assert "2: 0.001, 1" in _row(page, 1).inner_text()
    page.fill("#sweep-name", "form 2x2")
    page.click("#start-sweep")
    page.wait_for_url("**/sweeps/*")
    sweep_id = page.url.rsplit("/", 1)[1]
    page.get_by_role("heading", name="form 2x2").wait_for()
    page.wait_for_function("() => document.querySelector('#stability-plot')?.naturalWidth > 0",
                           timeout=180_000)
    sweep = live.http.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded" and sweep["name"] == "form 2x2"
    assert sweep["axes"] == [{"path": "model.init.std", "values": [0.3, 3]},
                             {"path": "optimizer.lr", "log_range": [0.001, 1.0], "points": 2}]
    assert isinstance(sweep["axes"][0]["values"][1], int)  # "3" is sent as the integer 3
    assert sweep["spec"] == TINY
    assert {m["job_id"] for m in sweep["members"]} == {
        a.get_attribute("href").rsplit("/", 1)[1]
        for a in page.locator("#stability-grid a.member-link").all()}
    assert len(sweep["members"]) == 4 and all(m["verdict"] for m in sweep["members"])
    assert len(_sweep_posts(p)) == 1
    assert p.external == []
    # if the page asked for the grid before a member had finished: 409 sweep-not-ready
    assert [e for e in p.errors if "status of 409" not in e] == []


def test_a_double_click_or_a_retry_after_a_lost_answer_makes_one_sweep(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    p = open_page(live.url)
    page = p.goto("/")
    _fill_spec(page, TINY)
    _one_axis(page, "seed", "0, 1")
    page.locator("#sweep-members").get_by_text("2 members").wait_for()
    page.fill("#sweep-name", "double click")
    page.dblclick("#start-sweep")
    page.wait_for_url("**/sweeps/*")
    time.sleep(0.5)
    sweeps = _sweeps_named(live.http, "double click")
    assert [s["id"] for s in sweeps] == [page.url.rsplit("/", 1)[1]]
    assert sweeps[0]["member_count"] == 2
    assert sweeps[0]["axes"] == [{"path": "seed", "values": [0, 1]}]

    # the server creates the sweep but its answer never reaches the page: the error is shown,
    # and a second click (same form, so the same key) gets that sweep instead of a new one
    page = p.goto("/")
    _fill_spec(page, TINY)
    _one_axis(page, "seed", "0, 1")
    page.fill("#sweep-name", "lost answer")
    keys: list[str] = []

    def lose_the_answer(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        keys.append(route.request.headers["idempotency-key"])
        if len(keys) == 1:
            response = route.fetch()  # the server handles it ...
            assert response.status == 202, response.text()
            route.abort()  # ... the page never hears back
        else:
            route.continue_()

    page.route("**/v1/sweeps", lose_the_answer)
    page.click("#start-sweep")
    error = page.locator("#sweep-error")
    error.wait_for()
    assert "Failed to fetch" in error.inner_text()
    assert len(_sweeps_named(live.http, "lost answer")) == 1
    page.click("#start-sweep")
    page.wait_for_url("**/sweeps/*")
    sweeps = _sweeps_named(live.http, "lost answer")
    assert [s["id"] for s in sweeps] == [page.url.rsplit("/", 1)[1]]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    page.unroute("**/v1/sweeps")

    # an edit makes it another request: a new key (the old one would be a 422 "reused")
    page = p.goto("/")
    _fill_spec(page, TINY)
    _one_axis(page, "seed", "0, 1")
    page.fill("#sweep-name", "lost answer")
    page.click("#start-sweep")
    page.wait_for_url("**/sweeps/*")
    assert len(_sweeps_named(live.http, "lost answer")) == 2
    posted = [h["idempotency-key"] for h in _sweep_posts(p)]
    assert len(posted) == 2 and posted[1] not in keys  # the double click posted once
    assert p.external == []
    assert [e for e in p.errors if "ERR_FAILED" not in e and "status of 409" not in e] == []


def test_what_the_server_refuses_is_shown_and_creates_nothing(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    p = open_page(live.url)
    page = p.goto("/")
    _fill_spec(page, TINY)
    page.fill("#sweep-name", "refused")
    error = page.locator("#sweep-error")
    # 1-3 axes; a new one goes before the last, so the map keeps lr across and std up
    page.click("#add-axis")
    assert page.locator("#add-axis").is_disabled()
    _row(page, 1).locator("input.axis-path").wait_for()
    assert _row(page, 1).locator("input.axis-path").input_value() == ""
    assert "path: choose a spec path" in _row(page, 1).inner_text()
    assert page.locator("#sweep-members").inner_text() == "– members"
    _set_values(page, 1, "model.depth", "2, 4")
    page.locator("#sweep-members").get_by_text("128 members").wait_for()
    assert "held at its first value" in _row(page, 1).inner_text()
    assert "map x (columns)" in _row(page, 2).inner_text()
    _row(page, 1).locator("button.remove-axis").click()
    page.locator("#sweep-members").get_by_text("64 members").wait_for()
    assert not page.locator("#add-axis").is_disabled()
    # what the browser can tell: no request is made
    _row(page, 1).locator("input.axis-lo").fill("2")
    assert "lo must be smaller than hi" in _row(page, 1).inner_text()
    page.locator("#sweep-members").get_by_text("– members").wait_for()
    page.click("#start-sweep")
    error.wait_for()
    assert error.inner_text() == "axis 2: lo must be smaller than hi"
    _row(page, 1).locator("input.axis-lo").fill("1e-3")
    _row(page, 1).locator("input.axis-points").fill("1")
    page.click("#start-sweep")
    page.get_by_text("axis 2: points: a whole number ≥ 2").wait_for()
    _row(page, 1).locator("input.axis-points").fill("8")
    assert _sweep_posts(p) == []

    # an unknown path: the server's 422, its problem text on the page
    _set_values(page, 0, "model.init.nonsense", "0.1, 1")
    page.click("#start-sweep")
    error.wait_for()
    text = error.inner_text()
    assert text.startswith("422 ") and "model.init.nonsense" in text, text
    assert page.url.rstrip("/") == live.url
    # over the member limit: the limit named
    _set_values(page, 0, "seed", ", ".join(str(i) for i in range(200)))
    page.locator("#sweep-members").get_by_text("1,600 members").wait_for()
    page.click("#start-sweep")
    page.wait_for_function(
        "() => /max_members/.test(document.querySelector('#sweep-error')?.textContent || '')")
    assert error.inner_text().startswith("422 ") and "max_members" in error.inner_text()
    # a spec the server finds invalid
    bad = {**TINY, "optimizer": {"name": "sgd", "lr": -1}}
    _fill_spec(page, bad)
    _set_values(page, 0, "seed", "0, 1")
    page.click("#start-sweep")
    page.wait_for_function(
        "() => /^422 /.test(document.querySelector('#sweep-error')?.textContent || '')")
    assert "lr" in error.inner_text()
    time.sleep(0.3)
    assert _sweeps_named(live.http, "refused") == []
    assert len(_sweep_posts(p)) == 3
    assert p.external == []
    assert [e for e in p.errors if "status of 422" not in e] == []


def test_with_keys_the_form_sends_the_key_the_page_asked_for(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    settings = make_settings(tmp_path, workers=0, api_key=ADMIN)  # members stay queued
    with LiveServer(settings) as server:
        key = create_key(settings, "team-a").key
        p = open_page(server.url)
        page = p.goto("/")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        page.locator("#sweep-rows").get_by_text("No sweeps yet").wait_for()
        _fill_spec(page, TINY)
        _set_values(page, 0, "seed", "0, 1, 2")
        _row(page, 1).locator("input.axis-points").fill("2")
        page.locator("#sweep-members").get_by_text("6 members").wait_for()
        page.fill("#sweep-name", "team-a's form sweep")
        page.click("#start-sweep")
        page.wait_for_url("**/sweeps/*")
        sweep_id = page.url.rsplit("/", 1)[1]
        # no member has finished (no workers): the page says so and keeps refreshing
        page.locator("#sweep-waiting").wait_for()
        page.locator("#sweep-status").get_by_text("queued: 0 / 6 members done").wait_for()
        page.wait_for_timeout(2500)
        page.locator("#sweep-waiting").wait_for()
        assert page.locator("#app .error").count() == 0
        own = _sweeps_named(server.http, "team-a's form sweep", headers={"X-API-Key": key})
        assert [s["id"] for s in own] == [sweep_id]
        posts = _sweep_posts(p)
        assert len(posts) == 1 and posts[0].get("x-api-key") == key
        assert all(key not in u for u, _ in p.requests)
        assert p.external == []
        # the first request, before the key was asked for, is the one 401 (then one prompt);
        # no member has finished: the page does not ask for the grid (no 409 either)
        assert [e for e in p.errors if "status of 401" not in e] == []
        assert len([e for e in p.errors if "status of 401" in e]) == 1
