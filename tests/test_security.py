"""Security basics, each checked: constant-time key comparison; keys never logged or echoed;
no stack trace, SQL or file path in any error body (database errors included); CORS off by
default and configurable; security headers on the HTML pages."""

from __future__ import annotations

import hmac
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SMALL_SPEC, make_settings
from fastapi.testclient import TestClient

from app.cli import create_key
from app.migrate import upgrade

ADMIN_KEY = "admin-7bq2-SECRET-value-xyz"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_compared_in_constant_time(make_client: Callable[..., TestClient],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(api_key=ADMIN_KEY, key_cache_seconds=0)
    tenant = create_key(client.app.state.settings, "team-a")
    seen: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        seen.append((bytes(a), bytes(b)))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert client.get("/v1/jobs", headers=_bearer(ADMIN_KEY)).status_code == 200
    assert (ADMIN_KEY.encode(), ADMIN_KEY.encode()) in seen
    seen.clear()
    assert client.get("/v1/jobs", headers=_bearer(ADMIN_KEY[:-1] + "!")).status_code == 401
    assert any(b == ADMIN_KEY.encode() for _, b in seen)
    seen.clear()
    assert client.get("/v1/jobs", headers=_bearer(tenant.key)).status_code == 200
    # the admin comparison, then the scrypt digests (32 bytes each)
    assert [len(a) for a, _ in seen][-1] == 32 and len(seen) == 2
    seen.clear()
    wrong = tenant.key[:-2] + ("AA" if not tenant.key.endswith("AA") else "BB")
    assert client.get("/v1/jobs", headers=_bearer(wrong)).status_code == 401
    assert len(seen) == 2 and seen[-1][0] != seen[-1][1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_keys_are_never_logged_or_echoed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_key=ADMIN_KEY)
    upgrade(settings.url)
    tenant = create_key(settings, "team-a")
    secret = tenant.key.split("_", 2)[2]
    wrong_tenant = tenant.key[:-3] + ("xyz" if not tenant.key.endswith("xyz") else "abc")
    wrong = ["not-the-admin-key-QQQ", ADMIN_KEY + "-", wrong_tenant]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    env.update(DATABASE_URL=settings.url, GRADWATCH_DATA_DIR=str(tmp_path),
               GRADWATCH_API_KEY=ADMIN_KEY, GRADWATCH_WORKERS="1",
               GRADWATCH_KEY_CACHE_SECONDS="0", GRADWATCH_LOG_FORMAT="json")
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level",
             "debug"], stdout=log, stderr=subprocess.STDOUT, env=env)
    answers: list[str] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and server.poll() is None, \
                    log_path.read_text()[-3000:]
                time.sleep(0.2)
            for key in (ADMIN_KEY, tenant.key, *wrong):
                for headers in (_bearer(key), {"X-API-Key": key}):
                    for method, path, body in (
                            ("GET", "/v1/jobs", None), ("POST", "/v1/jobs", SMALL_SPEC),
                            ("POST", "/v1/jobs", {"data": {"source": "nope"}}),
                            ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000", None),
                            ("PUT", "/v1/jobs", None), ("GET", "/v1/nothing", None),
                            ("GET", "/metrics", None), ("GET", "/v1/webhooks", None)):
                        r = http.request(method, path, json=body, headers=headers)
                        answers.append(r.text + repr(dict(r.headers)))
            statuses = [a for a in answers if '"status": 401' in a or '"status":401' in a]
            assert statuses  # the wrong keys were refused...
    finally:
        server.terminate()
        server.wait(timeout=60)
    logs = log_path.read_text()
    assert "gradwatch ready" in logs and "GET /v1/jobs" in logs  # the server logged requests
    for text in (ADMIN_KEY, tenant.key, secret, *wrong):
        assert text not in logs, f"a key was logged: {text[:6]}..."
        assert not [a for a in answers if text in a], f"a key was echoed: {text[:6]}..."


FORBIDDEN = ("Traceback", 'File "', ".py", "site-packages", "root:x:", "SELECT", "INSERT", "UPDATE ",
             "sqlite3", "sqlalchemy", "psycopg", "OperationalError:", "boom")


def _clean(r: httpx.Response | Any, where: str, tmp: Path) -> None:
    assert r.status_code >= 400, where
    assert r.headers["content-type"].startswith("application/problem+json"), where
    for word in (*FORBIDDEN, str(tmp)):
        assert word not in r.text, (where, word, r.text[:400])


def test_error_bodies_hold_no_traces_sql_or_paths(make_client: Callable[..., TestClient],
                                                   tmp_path: Path) -> None:
    client = make_client(max_body_bytes=64 * 1024)
    job = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    probes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/jobs", {"content": b"{not json", "headers": {"Content-Type":
                                                                 "application/json"}}),
        ("POST", "/v1/jobs", {"content": b"[" * 5000 + b"]" * 5000}),
        ("POST", "/v1/jobs", {"content": b"x" * 70_000}),
        ("POST", "/v1/jobs", {"content": b"<xml/>", "headers": {"Content-Type": "text/xml"}}),
        ("POST", "/v1/jobs", {"json": {"data": {"source": "inline", "X": "/etc/passwd"}}}),
        ("POST", "/v1/jobs", {"json": {"data": {"source": "synthetic", "name": "spirals"},
                                       "training": {"epochs": 10**30}}}),
        ("GET", f"/v1/jobs/{job}/gradients", {"params": {"start_step": 2**70}}),
        ("GET", f"/v1/jobs/{job}/events", {"headers": {"Last-Event-ID": "9" * 30}}),
        ("GET", "/v1/jobs", {"params": {"cursor": "../../etc/passwd"}}),
        ("GET", "/v1/jobs/a%00b", {}),
        ("GET", "/v1/jobs/" + "x" * 5000, {}),
        ("DELETE", f"/v1/jobs/{job}", {}),
        ("PUT", "/v1/jobs", {}),
        ("GET", "/v1/nope", {}),
        ("GET", "/static/..%2f..%2fetc/passwd", {}),
        ("GET", "/static/..%2fapp%2fmain", {}),
        ("POST", "/v1/webhooks", {"json": {"url": "file:///etc/passwd", "events": []}}),
        ("GET", "/v1/sweeps/nope/plots/stability", {"params": {"format": "exe"}}),
        ("POST", "/v1/sweeps", {"json": {"spec": {}, "axes": [{"path": "__class__",
                                                               "values": [1]}]}}),
    ]
    for method, path, kw in probes:
        _clean(client.request(method, path, **kw), f"{method} {path}", tmp_path)
    # database errors: a trigger whose message holds SQL and a file path, then a lost table
    db = client.app.state.settings.url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, "
                     "'boom: INSERT INTO jobs failed at /srv/app/secret.py'); END")
    _clean(client.post("/v1/jobs", json=SMALL_SPEC), "insert with a failing trigger", tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE jobs RENAME TO jobs_gone")
    for method, path in (("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job}"),
                         ("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{job}/metrics")):
        r = client.request(method, path, json=SMALL_SPEC if method == "POST" else None)
        assert r.status_code in (500, 503), (path, r.status_code)
        _clean(r, f"{method} {path} without the jobs table", tmp_path)


def test_cors_is_off_by_default_and_configurable(make_client: Callable[..., TestClient]) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    default = make_client()
    r = default.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = default.get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers

    allowed = make_client(cors_origins=["https://notebooks.example.org"])
    ok = {**preflight, "Origin": "https://notebooks.example.org"}
    r = allowed.options("/v1/jobs", headers=ok)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://notebooks.example.org"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers  # keys travel in headers
    r = allowed.get("/v1/jobs", headers={"Origin": "https://notebooks.example.org"})
    assert r.headers["access-control-allow-origin"] == "https://notebooks.example.org"
    assert "location" in r.headers["access-control-expose-headers"].lower()
    r = allowed.options("/v1/jobs", headers=preflight)
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    r = allowed.get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("page", ["/", "/jobs/x", "/sweeps/x", "/docs", "/redoc"])
def test_html_pages_send_security_headers(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = {d.split()[0]: d.split()[1:] for d in
           r.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"] and csp["base-uri"] == ["'none'"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "unsafe-eval" not in r.headers["content-security-policy"]
