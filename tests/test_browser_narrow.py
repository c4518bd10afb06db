"""The pages in a narrow window (a phone, 400 px wide) in a real headless browser (fixtures of
tests/test_browser.py): nothing spills out of its card or makes the page scroll sideways, even
with a job named by a long word."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import SMALL_SPEC, LiveServer
from tests.test_browser import SWEEP_2X2, Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)

LONG_NAME = "spirals-relu-he_normal-sgd-lr0.05-momentum0.9-clip_global_norm5-batch32-" * 2

# Elements whose right edge lies beyond the card (section) holding them, or beyond the window.
SPILLED = """(selectors) => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll(selectors)) {
    const card = el.closest('section');
    const right = el.getBoundingClientRect().right;
    const limit = card ? card.getBoundingClientRect().right : width;
    if (right > Math.min(limit, width) + 1) out.push(`${el.tagName}#${el.id}: ${Math.round(right)} > ${Math.round(limit)}`);
  }
  return out;
}"""


def _narrow(p: Page, path: str) -> Any:
    p.page.set_viewport_size({"width": 400, "height": 900})
    return p.goto(path)


def _assert_fits(page: Any, selectors: str) -> None:
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 400
    assert page.evaluate(SPILLED, selectors) == []


def test_a_400px_window_shows_every_page_inside_its_cards(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """At 400 px the job list ran 1,500 px wide (a long name, six columns), the job page's
    title ran off its card and the sweep page's map image spilled out of it: the whole page
    scrolled sideways."""
    job = live.http.post("/v1/jobs", json={**SMALL_SPEC, "name": LONG_NAME}).json()
    sweep = live.http.post("/v1/sweeps", json=SWEEP_2X2).json()
    live.wait_for(job["id"], {"succeeded"}, timeout=120)
    deadline = time.monotonic() + 150
    while sweep["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, sweep["progress"]
        time.sleep(0.3)
        sweep = live.http.get(f"/v1/sweeps/{sweep['id']}").json()
    p = open_page(live.url)

    page = _narrow(p, "/")
    page.locator(f'tr[data-job-id="{job["id"]}"]').wait_for()
    page.locator(f'tr[data-sweep-id="{sweep["id"]}"]').wait_for()
    _assert_fits(page, "section, h1, h2, .filters, textarea")  # a table may scroll in its card

    page = _narrow(p, f"/jobs/{job['id']}")
    page.wait_for_function("() => document.querySelector('#heatmap-plot')?.naturalWidth > 0")
    _assert_fits(page, "section, h1, #job-progress, .chart canvas, .u-legend, img")

    page = _narrow(p, f"/sweeps/{sweep['id']}")
    page.wait_for_function("() => document.querySelector('#stability-plot')?.naturalWidth > 0")
    _assert_fits(page, "section, h1, #sweep-recommended, img")
    assert p.external == [] and p.errors == []
