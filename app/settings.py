"""Service settings, read from the environment (``GRADWATCH_*`` and ``DATABASE_URL``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.spec import SpecLimits

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of the service. The embedded default needs no configuration at all."""

    model_config = SettingsConfigDict(env_prefix="GRADWATCH_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("data"), description="Where the default SQLite database lives.")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "GRADWATCH_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; default sqlite:///<data_dir>/gradwatch.db.",
    )
    executor: Literal["local", "celery"] = "local"
    broker_url: str = "redis://127.0.0.1:6379/0"
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=0,
        description="Local worker processes (0: the API only queues jobs).",
    )
    migrate_on_start: bool = Field(
        True, description="Run `alembic upgrade head` at start-up; when false, refuse to start "
                          "on an out-of-date schema."
    )
    api_key: str | None = Field(None, description="When set, /v1 requires this key.")

    # worker behaviour
    flush_every_steps: int = Field(500, ge=1)
    flush_interval_seconds: float = Field(1.0, gt=0)
    max_job_runtime_seconds: float = Field(3600.0, gt=0)
    heartbeat_timeout_seconds: float = Field(120.0, gt=0)
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)

    # SSE
    events_poll_seconds: float = Field(0.25, gt=0)
    events_ping_seconds: float = Field(15.0, gt=0)
    progress_event_interval_seconds: float = Field(1.0, gt=0)

    # limits
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_parameters: int = Field(SpecLimits.max_parameters, ge=1)
    max_layers: int = Field(SpecLimits.max_layers, ge=1)
    max_units: int = Field(SpecLimits.max_units, ge=1)
    max_steps: int = Field(SpecLimits.max_steps, ge=1)
    max_samples: int = Field(SpecLimits.max_samples, ge=1)
    max_data_values: int = Field(SpecLimits.max_data_values, ge=1)
    max_inline_values: int = Field(SpecLimits.max_inline_values, ge=1)
    max_batch_size: int = Field(SpecLimits.max_batch_size, ge=1)
    max_history_points: int = Field(100_000, ge=10)

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if self.database_url is None:
            path = (self.data_dir / "gradwatch.db").resolve()
            object.__setattr__(self, "database_url", f"sqlite:///{path}")
        return self

    @property
    def url(self) -> str:
        """The database URL (always set after validation)."""
        assert self.database_url is not None
        return self.database_url

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def spec_limits(self) -> SpecLimits:
        """The limits a submitted spec is validated against."""
        return SpecLimits(
            max_parameters=self.max_parameters,
            max_layers=self.max_layers,
            max_units=self.max_units,
            max_steps=self.max_steps,
            max_samples=self.max_samples,
            max_data_values=self.max_data_values,
            max_inline_values=self.max_inline_values,
            max_batch_size=self.max_batch_size,
        )

    def blas_threads_per_worker(self) -> int:
        """BLAS threads each worker may use so that workers x threads <= cores."""
        cores = os.cpu_count() or 1
        return max(1, cores // max(1, self.workers))
