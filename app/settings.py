"""Service settings, read from the environment (``GRADWATCH_*`` and ``DATABASE_URL``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.spec import SpecLimits

__all__ = ["Settings"]


def _default_job_memory() -> int:
    """A quarter of this machine's memory (at least 256 MiB)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 4 * 1024**3
    return max(256 * 1024**2, total // 4)


def _set_not_empty(value: str | None, refusal: str) -> str | None:
    """``value`` without surrounding whitespace (a secrets file's stray newline), None if
    unset; a value set but empty raises ``refusal`` (which never echoes the value: a key or a
    URL with its password)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ValueError(refusal)
    return value


class Settings(BaseSettings):
    """Every knob of the service. The embedded default needs no configuration at all."""

    # hide_input_in_errors: a refused value (a key, a database URL with its password) is never
    # echoed in the error that stops the server
    model_config = SettingsConfigDict(env_prefix="GRADWATCH_", extra="ignore", frozen=True,
                                      hide_input_in_errors=True)

    data_dir: Path = Field(Path("data"), description="Where the default SQLite database lives.")
    blob_dir: Path | None = Field(
        None, description="Where uploaded data sets and trained models are kept (default "
                          "<data_dir>/blobs); with workers on other machines, a shared mount.")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "GRADWATCH_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; default sqlite:///<data_dir>/gradwatch.db.",
    )
    executor: Literal["local", "celery"] = Field(
        "local", description="`local`: worker processes inside the server; `celery`: jobs go "
                             "to `gradwatch worker` processes on any machine through the broker.")
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    queue: str = Field("gradwatch", min_length=1, description="Celery queue the job ids go to.")
    broker_key_prefix: str = Field(
        "", description="Prefix of every Redis key the broker uses, so that several "
                        "deployments (or test runs) can share one Redis database.")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=0,
        description="Worker processes: the local executor's pool (0: the API only queues "
                    "jobs), or the default concurrency of `gradwatch worker`.",
    )
    migrate_on_start: bool = Field(
        True, description="Run `alembic upgrade head` at start-up; when false, refuse to start "
                          "on an out-of-date schema."
    )
    api_key: str | None = Field(
        None, description="The admin key: when set, /v1 requires a key (this one, which sees "
                          "every tenant, or a tenant key from `gradwatch keys create`). An "
                          "empty value is refused at start-up (unset the variable instead).")
    key_cache_seconds: float = Field(
        5.0, ge=0, le=300,
        description="How long each API process remembers a verified tenant key (and a "
                    "rejected one) so that a request does not pay the scrypt hash: a revoked "
                    "key stops working within this many seconds.")
    auth_max_failures: int = Field(
        10, ge=0,
        description="Wrong secrets for one tenant key id that each API process hashes within "
                    "GRADWATCH_AUTH_FAILURE_WINDOW_SECONDS; past it, that key id gets a 429 "
                    "with Retry-After (no scrypt hash) until the window closes. 0: no limit.")
    auth_max_address_failures: int = Field(
        100, ge=0,
        description="Failed authentications (wrong, unknown or revoked keys) from one client "
                    "address that each API process answers within the window; past it, that "
                    "address gets a 429 with Retry-After. 0: no limit.")
    auth_failure_window_seconds: float = Field(
        300.0, gt=0, le=86_400,
        description="The window of GRADWATCH_AUTH_MAX_FAILURES and "
                    "GRADWATCH_AUTH_MAX_ADDRESS_FAILURES: it opens at a key id's (an "
                    "address's) first failure; a refused one is tried again once it closes.")
    docs_public: bool = Field(
        True, description="Serve /docs, /redoc and /openapi.json without a key (they hold no "
                          "data); false: /openapi.json needs a key like /v1 (the pages load, "
                          "then ask for it).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API from other sites (CORS), e.g. "
                    '`["https://notebooks.example.org"]`; empty (default): CORS is off.')
    tenant_max_running_jobs: int = Field(
        4, ge=1, description="Jobs one tenant may have running at once; more stay queued "
                             "(workers do not start them until one finishes). The admin key "
                             "has no quota.")
    tenant_max_queued_jobs: int = Field(
        100, ge=1, description="Jobs one tenant may have waiting (queued) at once; a "
                               "submission past it (sweep members count) is a 429 with "
                               "Retry-After.")

    # worker behaviour
    flush_every_steps: int = Field(500, ge=1)
    flush_interval_seconds: float = Field(1.0, gt=0)
    max_job_runtime_seconds: float = Field(3600.0, gt=0)
    diagnosis_max_records: int = Field(
        50_000, ge=100,
        description="Step records a worker keeps in memory for the final diagnosis; longer runs "
                    "are thinned (first/last, non-finite and alert steps always kept). Every "
                    "record is still stored.",
    )
    heartbeat_timeout_seconds: float = Field(
        120.0, gt=0, description="A running job whose heartbeat is older than this has lost "
                                 "its worker (heartbeats are sent every timeout/4).")
    max_attempts: int = Field(
        3, ge=1, description="Starts of a job whose worker keeps getting lost before it is "
                             "failed with 'worker lost' (both executors).")
    reaper_interval_seconds: float = Field(
        15.0, gt=0, description="How often every API process looks for jobs whose worker "
                                "went silent and for jobs the executor never accepted.")
    enqueue_retry_seconds: float = Field(
        30.0, gt=0, description="A queued job whose id the executor has not accepted this "
                                "long after its creation (the API stopped between commit and "
                                "send, or the broker was down) is sent again.")
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM a Celery worker lets its running job finish for "
                                "this long, then hands it back to the queue.")
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)
    db_pool_size: int = Field(
        10, ge=1, description="PostgreSQL connections each API process keeps (worker "
                              "processes keep 2: the job and its heartbeat).")
    db_max_overflow: int = Field(10, ge=0, description="Extra API connections under bursts.")
    db_pool_timeout_seconds: float = Field(30.0, gt=0)

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
    max_history_values: int = Field(
        2_000_000, ge=1000,
        description="A history response carries at most this many points in all (points "
                    "per series x series); past it, a 422 says to ask for fewer layers, "
                    "metrics or points.")
    max_job_memory_bytes: int = Field(
        default_factory=_default_job_memory, ge=16 * 1024**2,
        description="Memory one job may need, by preflight's estimate (parameters, gradients, "
                    "optimizer state, activations of a batch, data): a spec estimated above it "
                    "is a 422 at submission; worker processes run with RLIMIT_DATA at this "
                    "plus worker_memory_headroom_bytes, so a wrong estimate fails the job, "
                    "not the machine. Default: a quarter of the machine's memory.")
    preflight_probe_max_bytes: int = Field(
        256 * 1024**2, ge=0,
        description="POST /v1/preflight runs its probe pass (a real forward/backward of the "
                    "first batch, in the API process) only for specs estimated at most this "
                    "big, two at a time; bigger specs get the analytic report "
                    "(measured_amplification null).")
    worker_memory_headroom_bytes: int = Field(
        1024**3, ge=0, description="What a worker process needs besides the job (the "
                                   "interpreter, NumPy, BLAS buffers, the database driver).")

    # uploaded data sets (POST /v1/datasets; app.uploads, app.datasets)
    max_upload_bytes: int = Field(
        256 * 1024**2, ge=1024,
        description="Largest data set upload (the file's bytes; multipart framing included). "
                    "Checked against Content-Length before reading and again while reading; "
                    "the upload route is exempt from GRADWATCH_MAX_BODY_BYTES.")
    max_upload_rows: int = Field(SpecLimits.max_samples, ge=2,
                                 description="Rows (examples) of an uploaded data set.")
    max_upload_columns: int = Field(4096, ge=2, description="Columns of an uploaded data set "
                                                            "(inputs plus targets).")
    max_upload_line_bytes: int = Field(
        1024**2, ge=64, description="Longest CSV line (the header included), checked while "
                                    "reading.")
    max_upload_classes: int = Field(10_000, ge=2, description="Classes (max label + 1) of an "
                                                              "uploaded classification set.")
    tenant_max_upload_bytes: int = Field(
        1024**3, ge=0, description="Stored bytes of all data sets of one tenant (the admin "
                                   "key is not limited); past it, uploads get a 429.")

    blob_gc_on_start: bool = Field(
        True, description="At start-up, each API process removes from the blob store what a "
                          "crash left behind (`gradwatch gc` does it on demand): blobs no data "
                          "set or job refers to, abandoned upload staging files, empty model "
                          "directories — all older than GRADWATCH_BLOB_GC_GRACE_SECONDS.")
    blob_gc_grace_seconds: float = Field(
        3600.0, ge=60,
        description="Files younger than this are never removed by the garbage collection "
                    "(an upload may be between publishing its blob and committing its row).")

    # integration: webhooks, logs (see app.webhooks, app.delivery, app.correlation)
    webhook_allow_private: bool = Field(
        False, description="Allow webhook destinations on private, loopback and link-local "
                           "addresses (off: such URLs are refused, at subscription and again "
                           "at every delivery, so webhooks cannot reach internal services).")
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="Longest one delivery attempt may take (connect, send, "
                                        "read the answer).")
    webhook_max_attempts: int = Field(
        8, ge=1, le=50, description="Attempts per delivery before it is marked failed.")
    webhook_backoff_seconds: float = Field(
        10.0, gt=0, description="Wait before the 2nd attempt; doubles each attempt (+-20% "
                                "jitter), capped by GRADWATCH_WEBHOOK_BACKOFF_MAX_SECONDS.")
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0)
    webhook_max_response_bytes: int = Field(
        64 * 1024, ge=0, description="Bytes of a receiver's answer read at most (the rest is "
                                     "dropped); the first 500 characters are recorded.")
    webhook_poll_seconds: float = Field(
        1.0, gt=0, description="How often each worker process looks for due deliveries.")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json`: one JSON object per line with request_id, job_id and "
                            "tenant; `text`: plain lines.")

    @field_validator("database_url")
    @classmethod
    def _no_empty_url(cls, value: str | None) -> str | None:
        return _set_not_empty(
            value, "DATABASE_URL is set but empty. Unset it for the default SQLite database "
                   "(<data_dir>/gradwatch.db), or give a SQLAlchemy URL, e.g. "
                   "postgresql+psycopg://user:password@host:5432/gradwatch")

    @field_validator("api_key")
    @classmethod
    def _no_empty_key(cls, value: str | None) -> str | None:
        value = _set_not_empty(
            value, "GRADWATCH_API_KEY is set but empty: it would not protect anything. Unset "
                   "it to run without an admin key, or set a real key "
                   "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if value is None:
            return None
        if re.fullmatch(r"gw_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", value):
            raise ValueError(
                "GRADWATCH_API_KEY holds a tenant key (gw_...): on a server it is the admin key, "
                "which sees every tenant. Give the server an admin key of its own; tenant keys "
                "belong in clients")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # a JSON list, or a comma-separated one
            if value.strip().startswith("["):
                return json.loads(value)
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if self.blob_dir is None:
            object.__setattr__(self, "blob_dir", self.data_dir / "blobs")
        if self.database_url is None:
            path = (self.data_dir / "gradwatch.db").resolve()
            object.__setattr__(self, "database_url", f"sqlite:///{path}")
        else:
            # a plain postgres URL (as most providers hand them out) means psycopg 3 here
            for plain in ("postgresql://", "postgres://"):
                if self.database_url.startswith(plain):
                    object.__setattr__(self, "database_url", "postgresql+psycopg://"
                                       + self.database_url.removeprefix(plain))
        return self

    @property
    def url(self) -> str:
        """The database URL (always set after validation)."""
        assert self.database_url is not None
        return self.database_url

    @property
    def url_for_logs(self) -> str:
        """The database URL without its password."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def broker_url_for_logs(self) -> str:
        """The broker URL without its password."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.broker_url).render_as_string(hide_password=True)
        except Exception:
            return self.broker_url.split("@")[-1]

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

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

    def blas_threads_per_worker(self, workers: int | None = None) -> int:
        """BLAS threads each of ``workers`` (default: ``self.workers``) processes may use so
        that workers x threads <= cores."""
        cores = os.cpu_count() or 1
        return max(1, cores // max(1, self.workers if workers is None else workers))

    @property
    def heartbeat_interval_seconds(self) -> float:
        """How often a running job proves its worker is alive: four beats per timeout."""
        return self.heartbeat_timeout_seconds / 4

    @property
    def runtime_grace_seconds(self) -> float:
        """How long past its runtime limit a job may take before its process is killed (the
        trainer stops itself at the limit; this is the backstop)."""
        return max(30.0, 0.1 * self.max_job_runtime_seconds)

    @property
    def broker_visibility_timeout_seconds(self) -> int:
        """Redis re-delivers an unacknowledged message after this long. It must exceed the
        longest a job can run (runtime limit + grace + a shutdown's hand-back), or a second
        worker would be handed a job that is still running."""
        return int(self.max_job_runtime_seconds + self.runtime_grace_seconds
                   + self.shutdown_grace_seconds + self.heartbeat_timeout_seconds + 300)
