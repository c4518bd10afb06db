"""The sweep page's axis controls, in a real headless browser (fixtures of
tests/test_browser.py): on a finished 3-axis sweep, choosing x and a held axis's value redraws
the grid with exactly the members holding that value, reloads the map with the `at.` query,
keeps the choice in the page URL, and a reload restores it; a URL value no member has is
named in a note and falls back to the axis's first value; a map answer overtaken by a
later view is dropped; nothing leaves the host."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import LiveServer
from tests.test_browser import Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)

SWEEP_2X2X2 = {
    "name": "three axes on the page",
    "spec": {"seed": 0, "data": {"source": "synthetic", "name": "spirals", "n_samples": 120},
             "model": {"hidden": [{"units": 8}] * 2, "init": {"scheme": "normal", "std": 0.3}},
             "optimizer": {"name": "sgd", "lr": 0.01},
             "training": {"epochs": 1, "batch_size": 32}},
    "axes": [{"path": "model.init.std", "values": [0.1, 3.0]},
             {"path": "optimizer.lr", "values": [0.001, 1.0]},
             {"path": "seed", "values": [0, 1]}],
}

LINKS = ("() => JSON.stringify([...document.querySelectorAll('#stability-grid a.member-link')]"
         ".map((a) => a.getAttribute('href')).sort())")


def _wait_links(page: Any, expected: list[str]) -> None:
    page.wait_for_function(f"(want) => ({LINKS})() === want",
                           arg=json.dumps(sorted(expected), separators=(",", ":")))


def _map_requests(p: Page, sweep_id: str) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(u).query) for u, _ in p.requests
            if urlsplit(u).path == f"/v1/sweeps/{sweep_id}/plots/stability"]


def _map_loaded(page: Any, query: str) -> None:
    """Wait for the map image of the view ``query`` (its data-query) to load."""
    page.wait_for_function("(q) => { const i = document.getElementById('stability-plot');"
                           " return i.dataset.query === q && i.src === i.dataset.url"
                           " && i.complete && i.naturalWidth > 0; }", arg=query)


def test_choosing_a_held_axis_value_redraws_the_grid_and_map_and_lives_in_the_url(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    r = live.http.post("/v1/sweeps", json=SWEEP_2X2X2)
    assert r.status_code == 202, r.text
    sweep = live.wait_sweep(r.json()["id"])
    assert sweep["status"] == "succeeded", sweep
    sid = sweep["id"]
    members = live.http.get(f"/v1/sweeps/{sid}").json()["members"]
    assert len(members) == 8

    def links(**held: Any) -> list[str]:
        return [f"/jobs/{m['job_id']}" for m in members
                if all(m["values"][k] == v for k, v in held.items())]

    p = open_page(live.url)
    page = p.goto(f"/sweeps/{sid}")
    # default view: x = seed (last axis), y = init std (first), lr held at its first value
    _wait_links(page, links(**{"optimizer.lr": 0.001}))
    _map_loaded(page, "x=seed&y=model.init.std")
    assert page.locator("#axis-x").input_value() == "seed"
    assert page.locator("#axis-y").input_value() == "model.init.std"
    held = page.locator("#axis-controls select.axis-at")
    assert held.count() == 1 and held.get_attribute("data-path") == "optimizer.lr"
    assert held.locator("option").all_inner_texts() == ["0.001", "1"]

    # x = optimizer.lr: seed becomes the held axis; choose its second value
    page.select_option("#axis-x", "optimizer.lr")
    _wait_links(page, links(seed=0))
    seed = page.locator("#axis-controls select.axis-at[data-path='seed']")
    assert seed.locator("option").all_inner_texts() == ["0", "1"]
    before = len(_map_requests(p, sid))
    seed.select_option("1")
    expected = links(seed=1)
    assert len(expected) == 4
    _wait_links(page, expected)
    head = page.locator("#stability-grid thead th").all_inner_texts()
    assert head[0] == "model.init.std \\ optimizer.lr" and head[1:] == ["0.001", "1"]
    _map_loaded(page, "x=optimizer.lr&y=model.init.std&at.seed=1")
    latest = _map_requests(p, sid)[before:]
    assert latest and latest[-1] == {"x": ["optimizer.lr"], "y": ["model.init.std"],
                                     "at.seed": ["1"]}, latest
    # the same grid as the API's
    grid = live.http.get(f"/v1/sweeps/{sid}/stability",
                         params={"x": "optimizer.lr", "y": "model.init.std",
                                 "at.seed": "1"}).json()
    assert grid["fixed"] == {"seed": 1}
    assert sorted(f"/jobs/{m['job_id']}" for m in members
                  if m["index"] in {i for row in grid["member"] for i in row}) == sorted(expected)
    # the choice is the page URL's query
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"x": ["optimizer.lr"], "y": ["model.init.std"], "at.seed": ["1"]}

    # a reload (or the link) restores it
    page.reload()
    _wait_links(page, expected)
    assert page.locator("#axis-x").input_value() == "optimizer.lr"
    assert page.locator("#axis-y").input_value() == "model.init.std"
    assert page.locator("select.axis-at[data-path='seed']").input_value() == "1"
    _map_loaded(page, "x=optimizer.lr&y=model.init.std&at.seed=1")
    assert _map_requests(p, sid)[-1] == query

    # choosing y = x's axis swaps them
    page.select_option("#axis-y", "optimizer.lr")
    page.wait_for_function("() => new URLSearchParams(location.search).get('x')"
                           " === 'model.init.std'")
    assert page.locator("#axis-y").input_value() == "optimizer.lr"
    page.wait_for_function("() => document.querySelector('#stability-grid thead th')"
                           ".textContent === 'optimizer.lr \\\\ model.init.std'")
    _wait_links(page, expected)
    assert p.external == [] and p.errors == []


def _finished_sweep(live: LiveServer) -> tuple[str, list[dict[str, Any]]]:
    r = live.http.post("/v1/sweeps", json=SWEEP_2X2X2)
    assert r.status_code == 202, r.text
    sweep = live.wait_sweep(r.json()["id"])
    assert sweep["status"] == "succeeded", sweep
    return sweep["id"], sweep["members"]


def test_a_url_value_no_member_has_is_named_and_the_axis_falls_back_to_its_first_value(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    sid, members = _finished_sweep(live)
    p = open_page(live.url)
    page = p.goto(f"/sweeps/{sid}?x=seed&y=model.init.std&at.optimizer.lr=7&at.nope=1")
    note = page.locator("#view-note")
    note.wait_for()
    text = note.inner_text()
    assert "at.optimizer.lr=7 matches no member" in text, text
    assert "0.001, 1" in text and "showing optimizer.lr = 0.001" in text, text
    assert "at.nope" in text, text
    # the page works: the grid of the axis's first value, its selector, the map, the URL
    _wait_links(page, [f"/jobs/{m['job_id']}" for m in members
                       if m["values"]["optimizer.lr"] == 0.001])
    assert page.locator("select.axis-at[data-path='optimizer.lr']").input_value() == "0.001"
    _map_loaded(page, "x=seed&y=model.init.std&at.optimizer.lr=0.001")
    assert parse_qs(urlsplit(page.url).query) == {
        "x": ["seed"], "y": ["model.init.std"], "at.optimizer.lr": ["0.001"]}
    # a value written differently (0.0010) is the same value: no note
    page = p.goto(f"/sweeps/{sid}?x=seed&y=model.init.std&at.optimizer.lr=1.0")
    _wait_links(page, [f"/jobs/{m['job_id']}" for m in members
                       if m["values"]["optimizer.lr"] == 1.0])
    assert page.locator("#view-note").is_hidden()
    assert page.locator("select.axis-at[data-path='optimizer.lr']").input_value() == "1"
    assert p.external == [] and p.errors == [], (p.external, p.errors)


def test_a_map_overtaken_by_a_later_view_is_dropped(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """Two quick x changes: the first view's map is held back until the second's has loaded;
    when it arrives, the image keeps showing the second view."""
    sid, _ = _finished_sweep(live)
    p = open_page(live.url)
    page = p.goto(f"/sweeps/{sid}")
    page.wait_for_selector("#stability-plot", state="attached")
    _map_loaded(page, "x=seed&y=model.init.std")
    held: list[Any] = []

    def hold_first(route: Any) -> None:
        if held:
            route.fallback()  # on to the recording route of the page
        else:
            held.append(route)  # answered below, after the later view's map

    page.route(f"**/v1/sweeps/{sid}/plots/stability?*", hold_first)
    page.select_option("#axis-x", "optimizer.lr")  # first view: x=lr, y=std, seed held
    deadline = time.monotonic() + 60
    while not held:
        assert time.monotonic() < deadline, "the first view's map was never requested"
        page.wait_for_timeout(50)
    first_query = urlsplit(held[0].request.url).query
    page.select_option("#axis-y", "seed")  # second view: x=lr, y=seed, std held
    second = "x=optimizer.lr&y=seed"
    _map_loaded(page, second)
    shown = page.evaluate("() => document.getElementById('stability-plot').src")
    with page.expect_response(lambda r: urlsplit(r.url).query == first_query):
        held[0].fallback()
    page.wait_for_function("(src) => { const i = document.getElementById('stability-plot');"
                           " return i.dataset.dropped === '1' || i.src !== src; }", arg=shown)
    state = page.evaluate("() => { const i = document.getElementById('stability-plot');"
                          " return [i.dataset.query, i.src, i.dataset.dropped]; }")
    assert state == [second, shown, "1"], state
    assert first_query != second and "y=model.init.std" in first_query
    assert parse_qs(urlsplit(page.url).query) == {"x": ["optimizer.lr"], "y": ["seed"]}
    assert p.external == [] and p.errors == [], (p.external, p.errors)
