"""HTML pages served by the service itself: the dashboard (/, /jobs/{id}), Swagger UI (/docs)
and ReDoc (/redoc). Everything they load comes from this host (app/static, vendored packages
with their licences): no CDN, no build step.

The pages hold no data: their scripts call the /v1 API, sending the API key (asked for once,
kept in the browser's sessionStorage) as a header, never in a URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["SECURITY_HEADERS", "STATIC_DIR", "router", "static_files"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

SECURITY_HEADERS = {
    # Scripts and styles only from this host (Swagger UI and the dashboard set element styles
    # from script; ReDoc's styled-components inject <style> and it runs a worker from a blob).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
        "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8",
                        headers=SECURITY_HEADERS)


@router.get("/")
def dashboard() -> FileResponse:
    return _page("dashboard.html")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> FileResponse:
    return _page("dashboard.html")


@router.get("/sweeps/{sweep_id}")
def sweep_page(sweep_id: str) -> FileResponse:
    return _page("dashboard.html")


@router.get("/docs")
def swagger_ui() -> FileResponse:
    return _page("docs.html")


@router.get("/redoc")
def redoc() -> FileResponse:
    return _page("redoc.html")


def static_files() -> StaticFiles:
    """The /static mount: the pages' scripts and styles and the vendored packages."""
    return StaticFiles(directory=STATIC_DIR)
