"""Backends of the reliability suite (import the fixture: `from reliability_backends import database_url`).

The tests where the backend matters run on both databases: `database_url` is None (the
embedded SQLite default) or the test session's PostgreSQL database (`postgres_url` of
tests/conftest.py: created on the test server, migrated, dropped at the end of the session;
outside CI an unreachable server skips these cases with a message, under CI=true it fails —
as the integration tests do). The database is shared with the session's other PostgreSQL
tests (a database each would cost a slow DROP DATABASE apiece), so these tests look only at
the jobs they created."""

from __future__ import annotations

import pytest

BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (the server's default file, new for each test), else the session's
    PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def backend_env(database_url: str | None) -> dict[str, str]:
    """The environment that points a `gradwatch serve` at ``database_url``."""
    return {} if database_url is None else {"DATABASE_URL": database_url}
