"""A 500 (should one remain) tells the client the connection closes (issue 13 item 10): the
response carries `Connection: close`, so a keep-alive client's next request goes on a new
connection and succeeds. On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import LiveServer, make_settings
from reliability_backends import database_url as database_url  # the fixture


def test_a_500_says_connection_close_and_the_next_request_succeeds(
        tmp_path: Path, database_url: str | None) -> None:
    overrides = {} if database_url is None else {"database_url": database_url}
    server = LiveServer(make_settings(tmp_path, **overrides))

    @server.app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    with server, httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(5):
            r = client.get("/boom")
            assert r.status_code == 500 and r.headers["connection"] == "close"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert client.get("/healthz").status_code == 200
        # a database error (here: a NUL character PostgreSQL would refuse) is no 500 at all
        r = client.get("/v1/jobs/a%00b")
        assert r.status_code == 422 and "connection" not in r.headers
