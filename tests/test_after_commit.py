"""app.db.AfterCommit: side effects that follow a committed transaction, and only that."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.db import AfterCommit, build_engine, build_sessionmaker

KEY = "test.after-commit"


@pytest.fixture
def hooked(migrated_url: str) -> Iterator[tuple[sessionmaker[Session], list[Any]]]:
    """Sessions whose committed items land in the list, with the number of connections the
    engine had checked out when the action ran."""
    engine = build_engine(migrated_url)
    factory = build_sessionmaker(engine)
    seen: list[Any] = []

    def action(items: list[Any]) -> None:
        seen.append((items, engine.pool.checkedout()))  # type: ignore[attr-defined]

    hook = AfterCommit(factory, KEY, action)
    hook.install()
    yield factory, seen
    hook.uninstall()
    engine.dispose()


def test_the_action_runs_after_the_commit_gave_its_connection_back(
        hooked: tuple[sessionmaker[Session], list[Any]]) -> None:
    factory, seen = hooked
    with factory() as session:
        session.execute(text("SELECT 1"))
        AfterCommit.queue(session, KEY, "a")
        AfterCommit.queue(session, KEY, "b")
        AfterCommit.queue(session, KEY, "a")
        assert seen == []
        session.commit()
        assert seen == [(["a", "b"], 0)]  # once each, in order, no connection held
        session.execute(text("SELECT 1"))  # the next transaction starts empty
        session.commit()
    assert seen == [(["a", "b"], 0)]


def test_a_rolled_back_transaction_runs_nothing(
        hooked: tuple[sessionmaker[Session], list[Any]]) -> None:
    factory, seen = hooked
    with factory() as session:
        session.execute(text("SELECT 1"))
        AfterCommit.queue(session, KEY, "lost")
        session.rollback()
        session.execute(text("SELECT 1"))
        session.commit()
    with factory() as session:
        AfterCommit.queue(session, KEY, "closed")  # closed without a commit
    assert seen == []


def test_a_released_savepoint_waits_for_the_outer_commit(
        hooked: tuple[sessionmaker[Session], list[Any]]) -> None:
    factory, seen = hooked
    with factory() as session:
        session.execute(text("SELECT 1"))
        with session.begin_nested():
            AfterCommit.queue(session, KEY, "inner")
        assert seen == []
        AfterCommit.queue(session, KEY, "outer")
        session.commit()
    assert seen == [(["inner", "outer"], 0)]
