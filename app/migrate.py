"""Alembic, configured in code so migrations are found from an installed package too."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

import migrations
from app.db import build_engine

__all__ = ["alembic_config", "current_revision", "head_revision", "schema_is_current", "upgrade"]


def alembic_config(url: str) -> Config:
    """An Alembic Config pointing at the packaged ``migrations`` directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option(
        "file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s"
    )
    return cfg


def _prepare(url: str) -> None:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


# pg_advisory_lock key: API replicas and the migrate job starting together migrate one at a time
_MIGRATION_LOCK = 0x6772_6164_7761_7463  # "gradwatc"


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating a SQLite file if needed).

    On PostgreSQL the upgrade holds an advisory lock, so processes starting at the same time
    migrate one after the other (the later ones find nothing to do).
    """
    _prepare(url)
    cfg = alembic_config(url)
    if not url.startswith("postgresql"):
        command.upgrade(cfg, revision)
        return
    engine = build_engine(url, pool=False)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            conn.commit()
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision(url: str = "sqlite://") -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_is_current(url: str) -> tuple[bool, str | None, str | None]:
    """(is current, database revision, code's head revision)."""
    _prepare(url)
    engine = build_engine(url, pool=False)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision(url)
    return current == head, current, head
