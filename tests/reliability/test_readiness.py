"""/readyz reports a stuck writer (issue 13 item 6): while something holds SQLite's write
lock (a frozen worker mid-transaction), readiness is 503 naming it; once the lock is free,
200 again. Liveness stays 200 throughout."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from fastapi.testclient import TestClient


def test_readyz_is_503_while_a_writer_holds_the_write_lock(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.get("/readyz").json()["checks"]["writer"] == "ok"
    path = client.app.state.settings.url.removeprefix("sqlite:///")  # type: ignore[attr-defined]
    stuck = sqlite3.connect(path, isolation_level=None)
    try:
        stuck.execute("BEGIN IMMEDIATE")  # a writer that never commits
        r = client.get("/readyz")
        assert r.status_code == 503 and "write lock" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200
    finally:
        stuck.execute("ROLLBACK")
        stuck.close()
    assert client.get("/readyz").status_code == 200
