"""Engine, sessions and column types shared by the models.

SQLite gets WAL, a busy timeout and foreign keys on every connection; transactions that
write start with ``BEGIN IMMEDIATE`` (take the write lock up front) so that two writers
queue behind the busy timeout instead of failing with "database is locked" when a read
transaction tries to upgrade. PostgreSQL needs none of this.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Double, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AfterCommit",
    "Base",
    "NonFiniteFloat",
    "build_engine",
    "build_sessionmaker",
    "is_locked_error",
    "retry_on_locked",
    "sqlite_writer_free",
    "unit_of_work",
]

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_NAN_TEXT = "NaN"


class NonFiniteFloat(TypeDecorator[float]):
    """A double that keeps NaN and +-Inf.

    PostgreSQL's double precision stores all three natively. SQLite stores +-Inf as REAL but
    turns a bound NaN into NULL, which would make NaN indistinguishable from "no value"; so on
    SQLite a NaN is bound as the text ``'NaN'`` (a REAL-affinity column keeps non-numeric
    text as TEXT) and read back as ``float('nan')``. NULL stays None.
    """

    impl = Double
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return None

        def process(value: Any) -> Any:
            if value is not None and value != value:  # NaN is the only value != itself
                return _NAN_TEXT
            return value

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return None

        def process(value: Any) -> Any:
            if value.__class__ is str:
                return math.nan if value == _NAN_TEXT else float(value)
            return value

        return process

    def process_bind_param(self, value: float | None, dialect: Dialect) -> Any:
        return value  # bind_processor above does the work; this keeps the ABC satisfied

    def process_result_value(self, value: Any, dialect: Dialect) -> float | None:
        return None if value is None else float(value)  # pragma: no cover - see result_processor


def sqlite_nan(value: float | None) -> Any:
    """The SQLite storage form of ``value`` for hand-built bulk rows (NaN -> 'NaN')."""
    if value is not None and value != value:
        return _NAN_TEXT
    return value


def build_engine(url: str, *, busy_timeout_ms: int = 30_000, pool: bool = True,
                 pool_size: int = 5, max_overflow: int = 10, pool_timeout: float = 30.0,
                 application_name: str = "gradwatch", foreign_keys: bool = True) -> Engine:
    """An engine for ``url``; SQLite connections get WAL, busy timeout and foreign keys.

    ``foreign_keys=False`` is for migrations only: SQLite's batch mode copies a table and
    drops the old one, and with foreign keys on that DROP cascades into every child table
    (a job's history, events and reports would vanish with an added column).

    On PostgreSQL the pool holds ``pool_size`` connections (plus ``max_overflow`` under
    bursts): size it to the threads that use it, since every process of every machine draws
    on the server's ``max_connections``. Connections are checked before use (a restarted
    server or a dropped idle connection costs a retry, not an error) and recycled hourly.
    """
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
        if not pool:
            kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_pre_ping"] = True
        if url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": 10, "application_name": application_name}
        if not pool:
            kwargs["poolclass"] = NullPool
        else:
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow,
                          pool_timeout=pool_timeout, pool_recycle=3600)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, busy_timeout_ms, foreign_keys)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int, foreign_keys: bool = True) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (not pysqlite) decide when transactions begin; see _on_begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def build_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


def writer_bind(engine: Engine) -> Engine:
    """The same engine, but SQLite transactions take the write lock at BEGIN."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="IMMEDIATE")
    return engine


@contextmanager
def unit_of_work(factory: sessionmaker[Session], *, write: bool = True) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for work outside requests)."""
    engine = factory.kw["bind"]
    with factory(bind=writer_bind(engine) if write else engine) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def sqlite_writer_free(engine: Engine, timeout_ms: int, busy_timeout_ms: int) -> bool:
    """SQLite: whether a writer can take the database's write lock within ``timeout_ms``
    (False: another writer holds it — stuck, frozen, or very slow). True on other databases,
    whose writers lock rows, not the database."""
    if engine.dialect.name != "sqlite":
        return True
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
        try:
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("ROLLBACK")
            return True
        except Exception as exc:
            if is_locked_error(exc):
                return False
            raise
        finally:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.close()
    finally:
        raw.close()


def is_locked_error(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


T = TypeVar("T")


def retry_on_locked(fn: Callable[[], T], *, attempts: int = 5, delay: float = 0.2) -> T:
    """Call ``fn``; retry with backoff when SQLite reports a lock beyond the busy timeout."""
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            if not is_locked_error(exc) or attempt == attempts - 1:
                raise
            log.warning("database locked; retrying (%d/%d)", attempt + 1, attempts)
            time.sleep(delay * (2**attempt))
    raise AssertionError("unreachable")


class AfterCommit:
    """Runs ``action(items)`` with what a transaction queued (:meth:`queue`) once the
    transaction has committed — never for a rolled-back one, never at a savepoint's release.

    For side effects outside the database that must follow the data they describe: sending a
    job to the executor, deleting a deleted job's files. The action runs once the session has
    given its connection back to the pool (at the end of the committed transaction, not in
    SQLAlchemy's ``after_commit``, which fires while the connection is still checked out): an
    action that opens a session of its own must not hold two connections at once, or a burst
    of requests as large as the pool would each hold one and wait for a second until the
    pool's timeout.
    """

    def __init__(self, factory: sessionmaker[Session], key: str,
                 action: Callable[[list[Any]], object]) -> None:
        self.factory, self.key, self.action = factory, key, action
        self._committed = f"{key}.committed"

    @staticmethod
    def queue(session: Session, key: str, item: Any) -> None:
        session.info.setdefault(key, []).append(item)

    def install(self) -> None:
        """Hook into every session ``factory`` makes."""
        event.listen(self.factory, "after_commit", self._after_commit)
        event.listen(self.factory, "after_transaction_end", self._after_transaction_end)

    def uninstall(self) -> None:
        event.remove(self.factory, "after_commit", self._after_commit)
        event.remove(self.factory, "after_transaction_end", self._after_transaction_end)

    def _after_commit(self, session: Session) -> None:
        root = session.get_transaction()
        if root is not None and root.is_active:
            return  # a savepoint was released: the transaction goes on
        items = session.info.pop(self.key, None)
        if items:  # run when the transaction ends, after its connection went back
            session.info.setdefault(self._committed, []).extend(items)

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the outermost transaction ended
            session.info.pop(self.key, None)  # what a rolled-back transaction queued
            committed = session.info.pop(self._committed, None)
            if committed:
                self.action(list(dict.fromkeys(committed)))
