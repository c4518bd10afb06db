"""The sweep page's axis controls, in a real headless browser (fixtures of
tests/test_browser.py): on a finished 3-axis sweep, choosing x and a held axis's value redraws
the grid with exactly the members holding that value, reloads the map with the `at.` query,
keeps the choice in the page URL, and a reload restores it; nothing leaves the host."""

from __future__ import annotations

import json
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
