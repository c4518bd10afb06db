"""The pages with tenant keys, in a real headless browser (fixtures of tests/test_browser.py):
the dashboard shows a tenant its own jobs only; with GRADWATCH_DOCS_PUBLIC=false, /docs and
/redoc ask for a key and send it as a header, never in a URL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.cli import create_key
from tests.conftest import LONG_SPEC, LiveServer, make_settings
from tests.test_browser import Page, browser, open_page  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api")

ADMIN = "browser-admin-key-123"


def test_dashboard_shows_a_tenant_its_own_jobs_only(
        tmp_path: Path, open_page: Callable[[str], Page]) -> None:  # noqa: F811
    settings = make_settings(tmp_path, workers=0, api_key=ADMIN)
    with LiveServer(settings) as server:
        key = create_key(settings, "team-a").key
        own = server.http.post("/v1/jobs", json=LONG_SPEC,
                               headers={"X-API-Key": key}).json()["id"]
        other = server.http.post("/v1/jobs", json=LONG_SPEC,
                                 headers={"X-API-Key": ADMIN}).json()["id"]
        p = open_page(server.url)
        page = p.goto("/")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        page.locator(f'tr[data-job-id="{own}"]').wait_for()
        time.sleep(0.3)
        assert page.locator(f'tr[data-job-id="{other}"]').count() == 0
        page.goto(server.url + f"/jobs/{other}")  # another's job page: not found, no data
        page.get_by_text("does not exist").first.wait_for()
        assert all(key not in url for url, _ in p.requests) and p.external == []


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_private_docs_ask_for_a_key_and_send_it_as_a_header(
        tmp_path: Path, open_page: Callable[[str], Page], path: str) -> None:  # noqa: F811
    settings = make_settings(tmp_path, workers=0, api_key=ADMIN, docs_public=False)
    with LiveServer(settings) as server:
        key = create_key(settings, "team-a").key
        assert server.http.get("/openapi.json").status_code == 401
        p = open_page(server.url)
        prompts: list[str] = []

        def answer(dialog: Any) -> None:
            prompts.append(dialog.message)
            dialog.accept(key)

        p.page.on("dialog", answer)
        page = p.goto(path)
        if path == "/docs":
            page.wait_for_selector(".opblock-summary", state="attached")
        else:
            page.get_by_role("heading", name="Submit a training job").first.wait_for()
        assert len(prompts) == 1 and "API key" in prompts[0]
        spec_calls = [h for u, h in p.requests if u.endswith("/openapi.json")]
        assert spec_calls and spec_calls[-1].get("x-api-key") == key
        assert all(key not in url for url, _ in p.requests) and p.external == []
        assert [e for e in p.errors if "cdn.redoc.ly" not in e and "401" not in e] == []
