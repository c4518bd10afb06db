"""The job and sweep pages' Cancel button in a real headless browser (fixtures of
tests/test_browser.py): confirmed first, POSTs the cancel with the page's API key, says what
happened (or the API's problem detail), and is gone once the job or sweep has finished."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LONG_SPEC, LiveServer, make_settings
from tests.test_browser import SWEEP_2X2, Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.timeout(240)


def _answer(page: Any, accept: bool, before: Callable[[], None] | None = None) -> list[str]:
    """Answer the page's next confirm() (after calling `before`); the questions asked."""
    asked: list[str] = []

    def handle(dialog: Any) -> None:
        asked.append(dialog.message)
        if before is not None:
            before()
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", handle)
    return asked


def _failed_loads(p: Page, *statuses: int) -> list[str]:
    """The console errors, less the browser's own note of a response with these statuses."""
    expected = [f"status of {s} " for s in statuses]
    return [e for e in p.errors
            if not (e.startswith("Failed to load resource") and any(s in e for s in expected))]


def test_job_page_cancels_a_queued_job_once_confirmed_with_the_pages_key(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    key = "browser-cancel-key"
    with LiveServer(make_settings(tmp_path, workers=0, api_key=key)) as server:
        server.http.headers["X-API-Key"] = key
        job = server.http.post("/v1/jobs", json=LONG_SPEC).json()
        p = open_page(server.url)
        page = p.goto(f"/jobs/{job['id']}")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        button = page.locator("#cancel-job")
        button.wait_for()
        asked = _answer(page, accept=False)  # "no": nothing happens
        button.click()
        assert asked and "Cancel this job?" in asked[0]
        assert server.http.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        assert button.is_visible() and not button.is_disabled()

        _answer(page, accept=True)
        button.click()
        page.wait_for_function(
            "() => document.querySelector('#cancel-job-outcome').textContent === 'Cancelled.'")
        assert server.http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        page.locator("#job-head .badge.cancelled").wait_for()  # the events say it too
        button.wait_for(state="hidden")  # a finished job cannot be cancelled
        posts = [h for u, h in p.requests if u.endswith(f"/v1/jobs/{job['id']}/cancel")]
        assert len(posts) == 1 and posts[0].get("x-api-key") == key
        assert p.external == [] and _failed_loads(p, 401) == []
        p.close()


def test_job_page_cancel_stops_a_running_job(
        live: LiveServer, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    job = live.http.post("/v1/jobs", json={**LONG_SPEC, "name": "cancel me"}).json()
    live.wait_for(job["id"], {"running"}, timeout=60)
    p = open_page(live.url)
    page = p.goto(f"/jobs/{job['id']}")
    page.wait_for_function("() => Number(document.querySelector('#grad-chart')?.dataset.points) > 0")
    page.evaluate("""() => {  // every text the outcome shows, however briefly (a text set
        // twice in one task is one callback: the records hold both)
        const el = document.querySelector('#cancel-job-outcome');
        window.said = [];
        new MutationObserver((records) => records.forEach(
            (r) => r.addedNodes.forEach((n) => window.said.push(n.textContent))))
            .observe(el, { childList: true, characterData: true, subtree: true });
    }""")
    _answer(page, accept=True)
    page.click("#cancel-job")
    page.locator("#job-head .badge.cancelled").wait_for(timeout=60_000)
    page.wait_for_function("() => window.said.at(-1) === 'Cancelled.'")  # once it stopped
    said = page.evaluate("() => window.said")
    assert said[0] == "Cancelling…" and said[1].startswith(
        "Cancel requested: the job stops at its next flush"), said
    assert page.locator("#cancel-job").is_hidden()
    done = live.wait_for(job["id"], {"cancelled"}, timeout=5)
    assert done["stop_reason"] == "cancelled" and done["progress"]["step"] > 0
    assert "stopped: cancelled" in page.locator("#job-progress").inner_text()
    assert p.external == [] and p.errors == []


def test_cancelling_a_job_that_finished_meanwhile_shows_the_409_detail(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    with LiveServer(make_settings(tmp_path, workers=0)) as server:
        job = server.http.post("/v1/jobs", json=LONG_SPEC).json()
        p = open_page(server.url)
        page = p.goto(f"/jobs/{job['id']}")
        page.locator("#cancel-job").wait_for()
        # the job is cancelled elsewhere (the CLI) while the person reads the question
        _answer(page, accept=True,
                before=lambda: server.http.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status())
        page.click("#cancel-job")
        error = page.locator("#cancel-job-outcome.error")
        error.wait_for()
        text = error.inner_text()
        assert text.startswith("409 ") and "already" in text and "{" not in text, text
        page.locator("#job-head .badge.cancelled").wait_for()
        assert page.locator("#cancel-job").is_hidden() and error.is_visible()
        assert p.external == [] and _failed_loads(p, 409) == []
        p.close()


def test_sweep_page_cancels_a_queued_sweep(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    with LiveServer(make_settings(tmp_path, workers=0)) as server:
        sweep = server.http.post("/v1/sweeps", json=SWEEP_2X2).json()
        p = open_page(server.url)
        page = p.goto(f"/sweeps/{sweep['id']}")
        button = page.locator("#cancel-sweep")
        button.wait_for()
        assert page.locator("#sweep-status").inner_text().startswith("queued")
        asked = _answer(page, accept=True)
        button.click()
        assert asked and "Cancel this sweep?" in asked[0]
        page.wait_for_function(
            "() => document.querySelector('#sweep-status').textContent.startsWith('cancelled')")
        assert page.locator("#cancel-sweep-outcome").inner_text() == "Cancelled."
        button.wait_for(state="hidden")
        after = server.http.get(f"/v1/sweeps/{sweep['id']}").json()
        assert after["status"] == "cancelled"
        assert {m["status"] for m in after["members"]} == {"cancelled"}
        # the page then asks for the map: 409, no member has a verdict (said, not an error)
        page.get_by_text("No member finished with a verdict").wait_for()
        assert p.external == [] and _failed_loads(p, 409) == []
        p.close()
