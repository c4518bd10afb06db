"""The job page's live charts (uPlot) in a real headless browser (fixtures of
tests/test_browser.py): what a person reads off them must be there and must agree with the
static plots below them on the same page."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from itertools import pairwise

import pytest

from app.showcase import DIVERGING_SPEC
from tests.conftest import LONG_SPEC, SMALL_SPEC, LiveServer
from tests.test_browser import Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)


def _y_ticks(page: Page, chart: str) -> list[float]:
    """The numbers written on a live chart's y axis (data-y-ticks: the labels drawn)."""
    labels = page.page.locator(chart).get_attribute("data-y-ticks")
    assert labels is not None, f"{chart} drew no y labels"
    return [float(label) for label in labels.split()]


def test_a_diverging_runs_live_charts_number_their_log_axis_up_to_the_overflow(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """The showcase run's gradient norm reaches ~3e82 and its loss ~1e94 before the Inf: past
    ~34 decades uPlot's own log axis draws no ticks, and the engineer looking at the
    explosion saw a y axis without a single number. The axis is labelled in powers of ten
    up to the explosion; a healthy run's axis (within a decade or two) keeps its 2×, 5×."""
    diverging = live.http.post("/v1/jobs", json=DIVERGING_SPEC).json()
    healthy = live.http.post("/v1/jobs", json=SMALL_SPEC).json()
    live.wait_for(diverging["id"], {"succeeded"}, timeout=120)
    live.wait_for(healthy["id"], {"succeeded"}, timeout=120)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{diverging['id']}")
    page.wait_for_function(
        "() => Number(document.querySelector('#loss-chart')?.dataset.points) > 20")
    norms = live.http.get(f"/v1/jobs/{diverging['id']}/metrics?metrics=grad_norm"
                          ).json()["series"]["grad_norm"]["values"]
    peak = max(v for v in norms if isinstance(v, float))  # NaN/Inf come as strings
    assert peak > 1e80
    for chart in ("#grad-chart", "#loss-chart"):
        ticks = _y_ticks(p, chart)
        assert len(ticks) >= 3, (chart, ticks)
        assert ticks == sorted(ticks) and all(float(f"{t:.0e}") == t for t in ticks), ticks
        assert max(ticks) >= 1e60, (chart, ticks)  # up to the explosion, not its start only
    assert max(_y_ticks(p, "#grad-chart")) <= peak * 1e10

    page = p.goto(f"/jobs/{healthy['id']}")
    page.wait_for_function(
        "() => Number(document.querySelector('#grad-chart')?.dataset.points) > 5")
    ticks = _y_ticks(p, "#grad-chart")
    assert len(ticks) >= 3 and math.log10(max(ticks) / min(ticks)) <= 3, ticks
    assert p.external == [] and p.errors == []


def _svg_strokes(svg: str) -> dict[str, str]:
    """The line colour of each element with an id (gid) in a static plot's SVG."""
    strokes = {}
    for m in re.finditer(r'<g id="([^"]+)">\s*<path [^>]*style="[^"]*stroke: (#[0-9a-f]{6})', svg):
        strokes[m.group(1)] = m.group(2)
    return strokes


def test_each_layer_has_the_same_colour_in_the_live_chart_and_the_static_plot(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """The live chart above and the static gradient plot below it on the job page: layer 0
    was orange in one and blue in the other (layer 2 red, the NaN/Inf colour, in one and
    green in the other), so which layer rose first read differently in the two."""
    job = live.http.post("/v1/jobs", json=DIVERGING_SPEC).json()
    live.wait_for(job["id"], {"succeeded"}, timeout=120)
    svg = live.http.get(f"/v1/jobs/{job['id']}/plots/gradients?format=svg").text
    static = _svg_strokes(svg)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    page.wait_for_function(
        "() => Number(document.querySelector('#grad-chart')?.dataset.points) > 10")
    live_colours = page.evaluate("""() => Object.fromEntries(
        [...document.querySelectorAll('#grad-chart .u-legend .u-series')].map((s) => [
          s.querySelector('.u-label')?.textContent.trim(),
          getComputedStyle(s.querySelector('.u-marker') || s).borderTopColor]))""")
    n_layers = len(DIVERGING_SPEC["model"]["hidden"]) + 1
    for i in range(n_layers):
        r, g, b = (int(static[f"layer-{i}"][k:k + 2], 16) for k in (1, 3, 5))
        assert live_colours[f"layer {i}"] == f"rgb({r}, {g}, {b})", (i, live_colours, static)
    assert p.external == [] and p.errors == []


def test_a_running_jobs_chart_fills_in_the_steps_between_two_events(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """Events bring one record per flush (about a second, thousands of steps of this job):
    after the history read at page load the live chart joined them with straight lines, so
    a spike in between never showed while the job ran. The page reads the (downsampled,
    spike-keeping) history again while the job runs: no wide gaps but at the live tip."""
    job = live.http.post("/v1/jobs", json=LONG_SPEC).json()
    live.wait_for(job["id"], {"running"}, timeout=60)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    page.wait_for_function("() => Number(document.querySelector('#grad-chart')?.dataset.points) > 0")
    page.wait_for_timeout(9_000)
    steps = page.evaluate("() => document.querySelector('#grad-chart').liveChart.data[0]")
    live.http.post(f"/v1/jobs/{job['id']}/cancel")
    # an event per flush (500 steps, or a second): the old chart's steps were that far apart
    gaps = [b - a for a, b in pairwise(steps)][:-4]  # not the live tip
    assert steps[-1] > 5_000 and max(gaps) <= 200, (steps[-1], max(gaps), steps[-12:])
    page.get_by_text("cancelled").first.wait_for(timeout=60_000)
    assert p.external == [] and p.errors == []


BROKEN_IMAGES = """() => [...document.images].filter((i) => i.offsetParent !== null && !(i.naturalWidth > 0))
    .map((i) => i.id || i.alt)"""


def test_a_running_job_and_a_waiting_sweep_show_no_broken_images(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """While a job ran its Plots section showed two broken-image icons ("gradient norms
    plot", "gradient heatmap"), and a sweep's page one ("stability map") until its members
    finished: as if the plots had failed. They show once they are there."""
    job = live.http.post("/v1/jobs", json=LONG_SPEC).json()
    live.wait_for(job["id"], {"running"}, timeout=60)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    page.wait_for_function("() => Number(document.querySelector('#grad-chart')?.dataset.points) > 0")
    assert page.evaluate(BROKEN_IMAGES) == []
    assert page.locator("#plots-note").is_visible()
    live.http.post(f"/v1/jobs/{job['id']}/cancel")
    page.wait_for_function("() => ['#heatmap-plot', '#gradients-plot'].every("
                           "(s) => document.querySelector(s)?.naturalWidth > 0)",
                           timeout=60_000)  # both loaded (either may come first)
    assert page.locator("#gradients-plot").is_visible()
    assert page.locator("#plots-note").count() == 0
    sweep = live.http.post("/v1/sweeps", json={"spec": LONG_SPEC, "axes": [
        {"path": "optimizer.lr", "values": [0.001, 0.002]},
        {"path": "seed", "values": [0, 1]}]}).json()
    page = p.goto(f"/sweeps/{sweep['id']}")
    page.locator("#sweep-waiting").wait_for()
    assert page.evaluate(BROKEN_IMAGES) == []
    live.http.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert p.external == [] and p.errors == []
