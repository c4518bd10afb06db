"""Alembic is the only way the schema changes: up, down, up again; models match migrations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from app.db import build_engine
from app.main import SchemaOutOfDateError, prepare_database
from app.migrate import alembic_config, downgrade, head_revision, upgrade
from app.settings import Settings

TABLES = {"jobs", "history_keys", "history_chunks", "history_rollups", "epoch_metrics",
          "webhooks", "webhook_deliveries", "metric_counters", "sweeps", "sweep_members",
          "job_events", "diagnostic_reports", "datasets", "api_keys",
          "tenant_quotas"}


def tables(url: str) -> set[str]:
    engine = build_engine(url, pool=False)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert tables(url) == TABLES
    downgrade(url, "base")
    assert tables(url) == set()
    upgrade(url)
    assert tables(url) == TABLES


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises when autogenerate would emit operations


def test_history_indexes_exist(migrated_url: str) -> None:
    engine = build_engine(migrated_url, pool=False)
    try:
        insp = inspect(engine)
        assert insp.get_pk_constraint("history_chunks")["constrained_columns"] == [
            "job_key", "first_step"]
        assert insp.get_pk_constraint("history_rollups")["constrained_columns"] == [
            "job_key", "level", "block"]
        assert [u["column_names"] for u in insp.get_unique_constraints("history_keys")] == [
            ["job_id"]]
    finally:
        engine.dispose()


def test_migration_files_are_named_by_date_and_slug() -> None:
    versions = Path(__file__).parent.parent / "migrations" / "versions"
    files = [p.name for p in versions.glob("*.py") if p.name != "__init__.py"]
    assert files
    for name in files:
        assert re.fullmatch(r"\d{4}_\d{2}_\d{2}_\w+\.py", name), name


def test_startup_refuses_an_out_of_date_schema_when_not_migrating(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'old.db'}", migrate_on_start=False)
    with pytest.raises(SchemaOutOfDateError, match="gradwatch migrate"):
        prepare_database(settings)
    migrating = Settings(database_url=settings.url, migrate_on_start=True)
    assert prepare_database(migrating) == head_revision()
    assert prepare_database(settings) == head_revision()


def test_sweeps_page_by_created_at_and_id_as_jobs_do(tmp_path: Path) -> None:
    """0024 adds the index GET /v1/sweeps pages by; its downgrade removes it again."""
    url = f"sqlite:///{tmp_path / 'm.db'}"

    def composite(table: str) -> list[list[str | None]]:
        engine = build_engine(url, pool=False)
        try:
            return [i["column_names"] for i in inspect(engine).get_indexes(table)
                    if len(i["column_names"]) > 1]
        finally:
            engine.dispose()

    upgrade(url)
    assert ["created_at", "id"] in composite("sweeps")
    assert ["created_at", "id"] in composite("jobs")
    downgrade(url, "0023_sweep_notify")
    assert ["created_at", "id"] not in composite("sweeps")
    upgrade(url)
    assert ["created_at", "id"] in composite("sweeps")
