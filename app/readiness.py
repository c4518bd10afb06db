"""Readiness: whether this API can serve (``GET /readyz``), checked one dependency at a time."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import sqlite_writer_free
from app.errors import ProblemError
from app.repositories import SystemRepository
from app.settings import Settings

__all__ = ["readiness"]


def readiness(factory: sessionmaker[Session], settings: Settings, *,
              head_revision: str | None, executor: Any, dispatcher: Any) -> dict[str, Any]:
    """The readiness checks (database, schema, a free write lock, executor, sweeper); 503
    naming the first that fails."""
    checks: dict[str, str] = {}
    try:
        with factory() as session:
            revision = SystemRepository(session).schema_revision()
        checks["database"] = "ok"
    except Exception as exc:
        raise ProblemError(f"database not reachable: {type(exc).__name__}", status=503,
                           slug="not-ready") from None
    if revision != head_revision:
        raise ProblemError(f"database schema is at {revision}, the code needs {head_revision}: "
                           "run `gradwatch migrate`", status=503, slug="not-ready")
    checks["schema"] = str(revision)
    if not sqlite_writer_free(factory.kw["bind"], 1000, settings.sqlite_busy_timeout_ms):
        raise ProblemError("the database's write lock has been held for more than 1 s: a "
                           "writer is stuck (a frozen worker?); writes wait, then fail with 503",
                           status=503, slug="not-ready", headers={"Retry-After": "5"})
    checks["writer"] = "ok"
    if not executor.healthy():
        raise ProblemError("the job executor is not running", status=503, slug="not-ready")
    checks["executor"] = executor.name
    if not dispatcher.alive():
        raise ProblemError("the sweeper that re-sends unsent jobs is not running", status=503,
                           slug="not-ready")
    return {"status": "ok", "checks": checks}
