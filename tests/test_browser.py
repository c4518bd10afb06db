"""The pages in a real headless browser: Debian's chromium driven by Playwright.

Every request a page makes is routed through a handler that lets requests to the test
server through and records (and aborts) anything else: the pages must work with no request
leaving the host. `make test` installs chromium when missing; without it these tests skip,
and under CI=true they fail.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.showcase import DIVERGING_SPEC
from tests.conftest import DEAD_SPEC, FITTED_SPEC, LONG_SPEC, LiveServer, make_settings

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("GRADWATCH_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        message = (f"no chromium at {CHROMIUM}: `make test` installs Debian's chromium "
                   "(apt-get install chromium)")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message}; under CI=true a missing browser is a failure", pytrace=False)
        pytest.skip(message)
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=ARGS)
        yield launched
        launched.close()


class Page:
    """A browser page that records external requests, console errors and page errors."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": 1280, "height": 1600})
        self.external: list[str] = []
        self.errors: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def _route(self, route: Any) -> None:
        request = route.request
        url = urlsplit(request.url)
        if url.scheme in ("data", "blob") or url.hostname in LOCAL_HOSTS:
            self.requests.append((request.url, dict(request.headers)))
            route.continue_()
        else:
            self.external.append(request.url)
            route.abort()

    def goto(self, path: str) -> Any:
        self.page.goto(self.base_url + path)
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Page]]:
    pages: list[Page] = []

    def make(base_url: str) -> Page:
        page = Page(browser, base_url)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()


def test_swagger_ui_renders_offline(live: LiveServer, open_page: Callable[[str], Page]) -> None:
    p = open_page(live.url)
    page = p.goto("/docs")
    page.wait_for_selector(".opblock-summary", state="attached")
    assert page.locator(".opblock").count() >= 15
    assert "gradwatch" in page.locator(".info .title").inner_text()
    page.locator("#operations-histories-getDiagnostics .opblock-summary").click()
    page.wait_for_selector("#operations-histories-getDiagnostics .response-col_description")
    assert "exploding" in page.locator("#operations-histories-getDiagnostics").inner_text()
    assert p.external == []
    assert p.errors == []


def test_redoc_renders_offline(live: LiveServer, open_page: Callable[[str], Page]) -> None:
    p = open_page(live.url)
    page = p.goto("/redoc")
    page.get_by_role("heading", name="Submit a training job").first.wait_for()
    assert page.locator("[data-section-id]").count() >= 15
    assert p.external == []
    # ReDoc's sidebar links to its vendor with a logo hosted elsewhere: the page's CSP
    # (img-src 'self') blocks it before any request is made; nothing else may fail.
    assert [e for e in p.errors if "cdn.redoc.ly" not in e] == []


def _chart_pixels(page: Any, selector: str) -> int:
    return int(page.evaluate("""(sel) => {
        const canvas = document.querySelector(sel + ' canvas');
        if (!canvas) return 0;
        const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let drawn = 0;
        for (let i = 3; i < px.length; i += 4) if (px[i] > 0) drawn++;
        return drawn;
    }""", selector))


def test_dashboard_runs_a_fix_and_shows_the_childs_verdict(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:
    job = live.http.post("/v1/jobs", json=DIVERGING_SPEC).json()
    live.wait_for(job["id"], {"succeeded"}, timeout=120)
    p = open_page(live.url)
    page = p.goto("/")
    row = page.locator(f'tr[data-job-id="{job["id"]}"]')
    row.wait_for()
    assert "exploding" in row.inner_text() and "succeeded" in row.inner_text()
    page.select_option("#filter-verdict", "healthy")  # filters narrow the list ...
    row.wait_for(state="detached")
    page.select_option("#filter-verdict", "exploding")  # ... and keep the URL shareable
    row.wait_for()
    assert page.url.endswith("/?verdict=exploding")

    row.locator("a").click()
    page.wait_for_url(f"**/jobs/{job['id']}")
    page.wait_for_function(
        "() => Number(document.querySelector('#grad-chart')?.dataset.points) > 10")
    assert _chart_pixels(page, "#grad-chart") > 1000
    page.locator("#non-finite").wait_for()  # the first Inf, in words
    page.locator("#diagnosis-summary").wait_for()
    assert "Exploding" in page.locator("#diagnosis").inner_text()

    page.locator("button.run-fix").first.click()
    page.wait_for_url(lambda url: "/jobs/" in url and job["id"] not in url)
    child_id = page.url.rsplit("/", 1)[1]
    verdict = page.locator("#job-verdict")
    page.wait_for_function(
        "() => !/no verdict/.test(document.querySelector('#job-verdict')?.textContent || 'no verdict')",
        timeout=120_000)
    child = live.http.get(f"/v1/jobs/{child_id}").json()
    assert child["parent_id"] == job["id"] and child["verdict"]
    assert verdict.inner_text() == child["verdict"]
    page.locator("#comparison-summary").wait_for()
    assert "verdict exploding ->" in page.locator("#comparison-summary").inner_text()
    page.wait_for_function("() => document.querySelector('#comparison-plot')?.naturalWidth > 0")
    assert p.external == [] and p.errors == []


def test_job_page_chart_follows_a_running_job_live(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:
    job = live.http.post("/v1/jobs", json=LONG_SPEC).json()
    live.wait_for(job["id"], {"running"}, timeout=60)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    page.wait_for_function("() => document.querySelector('#grad-chart')?.dataset.points")
    first = int(page.locator("#grad-chart").get_attribute("data-points") or 0)
    page.wait_for_function(
        f"() => Number(document.querySelector('#grad-chart').dataset.points) > {first} + 2",
        timeout=60_000)
    live.http.post(f"/v1/jobs/{job['id']}/cancel")
    page.get_by_text("cancelled").first.wait_for(timeout=60_000)
    assert p.external == [] and p.errors == []


@pytest.mark.parametrize(("spec", "note_id", "says"), [
    # every ReLU dead from the start: the hidden layers' gradients are 0
    (DEAD_SPEC, "grad-zero-note",
     "exactly 0, not drawn on the log axis: layers 0–1 from step 0 (8 points)"),
    # a loss fitted exactly: 0 from step 1
    (FITTED_SPEC, "loss-zero-note",
     "exactly 0, not drawn on the log axis: loss from step 1 (5 points)"),
])
def test_job_page_says_which_values_are_exactly_zero(
        live: LiveServer, open_page: Callable[[str], Page], spec: dict[str, Any],
        note_id: str, says: str) -> None:
    """Exact zeros, which the log charts cannot draw: the page says so under the chart
    instead of showing lines that just stop."""
    job = live.http.post("/v1/jobs", json=spec).json()
    live.wait_for(job["id"], {"succeeded"}, timeout=60)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    note = page.locator(f"#{note_id}")
    note.wait_for()
    assert note.inner_text() == says
    assert note.is_visible()
    assert p.external == [] and p.errors == []


def test_a_job_cancelled_before_it_ran_shows_no_verdict(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:
    """Cancelled while queued: nothing was recorded, so there is no verdict to show (the
    page showed a green "healthy" badge beside "No steps recorded yet")."""
    with LiveServer(make_settings(tmp_path, workers=0)) as server:
        job = server.http.post("/v1/jobs", json=LONG_SPEC).json()
        assert server.http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        p = open_page(server.url)
        page = p.goto(f"/jobs/{job['id']}")
        summary = page.locator("#diagnosis-summary")
        summary.wait_for()
        assert summary.inner_text() == "No steps were recorded: nothing to diagnose."
        assert page.locator("#diagnosis .badge").count() == 0
        assert p.external == [] and p.errors == []


def test_dashboard_asks_for_the_api_key_once_and_never_puts_it_in_a_url(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:
    key = "browser-test-key-123"
    with LiveServer(make_settings(tmp_path, workers=0, api_key=key)) as server:
        server.http.headers["X-API-Key"] = key
        job = server.http.post("/v1/jobs", json=LONG_SPEC).json()
        p = open_page(server.url)
        page = p.goto("/")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        page.locator(f'tr[data-job-id="{job["id"]}"]').wait_for()
        page.goto(server.url + "/")  # a reload keeps the key for the tab: no second prompt
        page.locator(f'tr[data-job-id="{job["id"]}"]').wait_for()
        time.sleep(0.3)
        assert page.locator("#key-dialog[open]").count() == 0
        api_calls = [(u, h) for u, h in p.requests if "/v1/" in u]
        assert api_calls and all(key not in u for u, _ in p.requests)
        assert any(h.get("x-api-key") == key for _, h in api_calls)
        assert p.external == []


SWEEP_2X2 = {
    "name": "browser sweep",
    "spec": {"seed": 0, "data": {"source": "synthetic", "name": "spirals", "n_samples": 200},
             "model": {"hidden": [{"units": 16}] * 4, "init": {"scheme": "normal", "std": 0.3}},
             "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
             "training": {"epochs": 2, "batch_size": 32}},
    "axes": [{"path": "model.init.std", "values": [0.3, 3.0]},
             {"path": "optimizer.lr", "values": [0.001, 1.0]}],
}


def test_sweep_page_maps_each_cell_to_its_member_job(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:
    sweep = live.http.post("/v1/sweeps", json=SWEEP_2X2).json()
    deadline = time.monotonic() + 120
    while sweep["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, sweep["progress"]
        time.sleep(0.3)
        sweep = live.http.get(f"/v1/sweeps/{sweep['id']}").json()
    assert sweep["status"] == "succeeded"
    expected = {f"/jobs/{m['job_id']}": m["verdict"] for m in sweep["members"]}
    assert all(expected.values())
    p = open_page(live.url)
    page = p.goto(f"/sweeps/{sweep['id']}")
    page.wait_for_function("() => document.querySelector('#stability-plot')?.naturalWidth > 0")
    links = page.locator("#stability-grid a.member-link")
    assert links.count() == 4
    shown = {links.nth(k).get_attribute("href"): links.nth(k).inner_text() for k in range(4)}
    assert shown == expected
    # the recommended setting above the map, linking to its member's job; its cell outlined
    rec = live.http.get(f"/v1/sweeps/{sweep['id']}/stability").json()["recommended"]
    assert rec is not None and expected[f"/jobs/{rec['job_id']}"] == "healthy"
    line = page.locator("#sweep-recommended")
    assert line.locator("a#recommended-link").get_attribute("href") == f"/jobs/{rec['job_id']}"
    assert line.inner_text().startswith("Recommended") and rec["reason"] in line.inner_text()
    marked = page.locator("#stability-grid td.recommended a.member-link")
    assert marked.count() == 1 and marked.get_attribute("href") == f"/jobs/{rec['job_id']}"
    first = next(iter(expected))
    page.click(f'#stability-grid a[href="{first}"]')
    page.wait_for_url(f"**{first}")
    page.locator("#sweep-link").wait_for()
    assert page.locator("#sweep-link").get_attribute("href") == f"/sweeps/{sweep['id']}"
    assert p.external == [] and p.errors == []


def test_a_finished_jobs_page_downloads_its_model_and_exports(
        live: LiveServer, open_page: Callable[[str], Page], tmp_path: Path) -> None:
    import core
    from tests.conftest import SMALL_SPEC

    job = live.http.post("/v1/jobs", json=SMALL_SPEC).json()
    live.wait_for(job["id"], {"succeeded"}, timeout=120)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    model_link = page.locator("#download-model")
    model_link.wait_for()
    for table in ("metrics", "gradients"):
        for fmt in ("csv", "parquet"):
            link = page.locator(f"#export-{table}-{fmt}")
            assert link.get_attribute("href") == f"/v1/jobs/{job['id']}/{table}.{fmt}"
    with page.expect_download() as info:
        model_link.click()
    download = info.value
    assert download.suggested_filename == f"{job['id']}-final.npz"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    model = core.load_model(saved)  # a valid model file, the same the API serves
    assert model.finite and saved.read_bytes() == live.http.get(
        f"/v1/jobs/{job['id']}/model").content
    with page.expect_download() as info:
        page.locator("#export-metrics-csv").click()
    csv_file = tmp_path / "metrics.csv"
    info.value.save_as(csv_file)
    assert csv_file.read_bytes() == live.http.get(f"/v1/jobs/{job['id']}/metrics.csv").content
    assert p.external == [] and p.errors == []


def test_an_exploded_jobs_model_link_shows_the_409_instead_of_a_file(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:
    job = live.http.post("/v1/jobs", json=DIVERGING_SPEC).json()
    live.wait_for(job["id"], {"succeeded"}, timeout=120)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    page.locator("#download-model").click()
    error = page.locator("#downloads .error")
    error.wait_for()
    assert "409" in error.inner_text() and "non-finite" in error.inner_text()
    assert p.external == []
