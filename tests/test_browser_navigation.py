"""Getting around the dashboard in a real headless browser (fixtures of tests/test_browser.py):
the home page's "Older jobs" past the newest 100, and the way back from a job deleted while its
page was open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LONG_SPEC, LiveServer, make_settings
from tests.test_browser import Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)

ROWS = "#job-rows tr[data-job-id]"


def _failed_loads(p: Page, status: int) -> list[str]:
    """The console errors, less the browser's own note of a response with this status."""
    return [e for e in p.errors
            if not (e.startswith("Failed to load resource") and f"status of {status} " in e)]


def test_older_jobs_pages_past_the_newest_100_keeping_the_filters(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """The list showed the newest 100 jobs and no way to the others."""
    settings = make_settings(tmp_path, workers=0, tenant_max_queued_jobs=500)
    with LiveServer(settings) as server:
        oldest = server.http.post("/v1/jobs", json={**LONG_SPEC, "name": "oldest"}).json()
        server.http.post(f"/v1/jobs/{oldest['id']}/cancel").raise_for_status()
        ids = [server.http.post("/v1/jobs", json={**LONG_SPEC, "name": f"job {k}"}).json()["id"]
               for k in range(101)]
        p = open_page(server.url)
        page = p.goto("/?status=queued")  # 101 queued jobs, the cancelled one left out
        page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 100")
        older = page.locator("#older-jobs")
        older.wait_for()
        assert page.locator(f'tr[data-job-id="{ids[0]}"]').count() == 0  # the 101st newest
        older.click()
        page.locator(f'tr[data-job-id="{ids[0]}"]').wait_for()
        older.wait_for(state="hidden")  # no page after it
        page.wait_for_timeout(2500)  # a refresh (every 2 s) keeps both pages
        shown = page.locator(ROWS).evaluate_all("(rows) => rows.map((r) => r.dataset.jobId)")
        assert shown == ids[::-1]  # newest first, each once, only the queued ones
        assert page.url.endswith("/?status=queued")

        page.select_option("#filter-status", "")  # any status: 102 jobs, from the newest again
        page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length === 100")
        older.wait_for()
        older.click()
        page.locator(f'tr[data-job-id="{oldest["id"]}"]').wait_for()
        assert page.locator(ROWS).count() == 102 and older.is_hidden()
        assert p.external == [] and p.errors == []


def test_a_job_deleted_while_its_page_is_open_says_so_with_a_way_back(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    """The page following a queued job read 404 once the job was deleted (cancelled and
    deleted with the CLI) and showed only the 404's text: no title, no link back."""
    # the event stream looks at the job every 3 s: the cancel and the delete land between two
    # looks, so the page sees the job gone (not cancelled first)
    settings = make_settings(tmp_path, workers=0, events_poll_seconds=3.0)
    with LiveServer(settings) as server:
        job = server.http.post("/v1/jobs", json={**LONG_SPEC, "name": "to delete"}).json()
        p = open_page(server.url)
        page = p.goto(f"/jobs/{job['id']}")
        page.locator("#job-head .badge.queued").wait_for()
        page.wait_for_function("() => document.querySelector('#diagnosis-summary')")
        assert any(u.endswith(f"/v1/jobs/{job['id']}/events") for u, _ in p.requests)
        server.http.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
        server.http.delete(f"/v1/jobs/{job['id']}").raise_for_status()
        gone = page.locator("#job-not-found")
        gone.wait_for(timeout=30_000)
        assert page.locator("#job-not-found h1").inner_text() == "Job not found"
        error = page.locator("#job-not-found .error").inner_text()
        assert error.startswith("404 ") and job["id"] in error and "{" not in error
        page.locator("#all-jobs").click()
        page.wait_for_url(f"{server.url}/")
        page.locator("#job-rows").wait_for()
        page.go_back()  # and on a reload: the same view
        gone.wait_for()
        assert page.locator("#all-jobs").get_attribute("href") == "/"
        assert p.external == [] and _failed_loads(p, 404) == []
