"""``create_app(settings)``: the FastAPI application. ``app.main:app`` is built on first use.

The lifespan migrates the database (``alembic upgrade head``; with
GRADWATCH_MIGRATE_ON_START=false it refuses to start on an out-of-date schema instead),
builds the engine and session factory, removes what a crash left in the blob store
(:mod:`app.blob_gc`), and starts the executor, which re-submits queued jobs and recovers
orphaned running ones.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from app.artifacts import ModelCleanup
from app.auth_throttle import AuthThrottle
from app.blob_gc import collect_at_start
from app.correlation import RequestIdMiddleware
from app.db import build_engine, build_sessionmaker
from app.deps import require_api_key
from app.dispatch import Dispatcher
from app.errors import install_error_handlers, unexpected_error
from app.executors import build_executor
from app.keys import KeyVerifier
from app.metrics import HttpMetricsMiddleware, build_registry
from app.middleware import BodySizeLimitMiddleware, RejectNulMiddleware
from app.migrate import head_revision, schema_is_current, upgrade
from app.openapi_docs import document
from app.routers import (
    datasets,
    events,
    exports,
    histories,
    jobs,
    metrics,
    models,
    pages,
    plots,
    sweeps,
    system,
    webhooks,
)
from app.routers.common import AUTH_THROTTLED, PROBLEM_SCHEMA
from app.settings import Settings

__all__ = ["SchemaOutOfDateError", "create_app"]

log = logging.getLogger("gradwatch")

DESCRIPTION = """\
Training-as-an-API for NumPy back-propagation networks, built to catch gradient explosion.

**How it works**: `POST /v1/jobs` a TrainingSpec (try the *explodes* example) → a worker
trains it, recording per-step, per-layer gradient norms before clipping → read them with
`/gradients` and `/metrics`, follow along with `/events` (server-sent events), get the
verdict and machine-applicable fixes from `/diagnostics`, and run a fix with `/repair`.

**Conventions**
* Non-finite numbers are data: in responses NaN and ±Inf are the strings `"NaN"`,
  `"Infinity"`, `"-Infinity"` (never null, never bare tokens). In requests every number must
  be finite.
* Every error is RFC 9457 `application/problem+json` with a `detail`; validation errors (422)
  list each field path in `errors`.
* Steps and layers count from 0 (layer 0 is the first hidden layer, the last is the output).
* When the server has keys, `/v1` needs `Authorization: Bearer <key>` or `X-API-Key: <key>`:
  a **tenant key** (`gw_...`, from `gradwatch keys create --tenant NAME`) sees, lists and
  changes only its tenant's jobs, sweeps and webhooks — another tenant's are **404**, exactly
  like missing ones — and is bound by the tenant quotas (**429** with `Retry-After`); the
  **admin key** (GRADWATCH_API_KEY) sees everything and has no quota.
"""

TAGS = [
    {"name": "jobs", "description": "Submit, list, inspect, cancel, delete and repair jobs."},
    {"name": "histories", "description": "Recorded norms and metrics; the diagnosis."},
    {"name": "events", "description": "Live server-sent events of a job."},
    {"name": "plots", "description": "The histories as pictures (PNG or SVG)."},
    {"name": "specs", "description": "Analyse a spec before training."},
    {"name": "datasets", "description": "Built-in data sets; upload, list and delete your "
                                        "own."},
    {"name": "models", "description": "Download a job's trained model; predict with it."},
    {"name": "exports", "description": "Every recorded point of a history as CSV or Parquet."},
    {"name": "webhooks", "description": "Signed notifications of job events to your URL."},
    {"name": "health", "description": "Liveness and readiness probes; Prometheus metrics."},
]


class SchemaOutOfDateError(RuntimeError):
    """The database schema is not at the code's Alembic head and migrating is switched off."""


def prepare_database(settings: Settings) -> str | None:
    """Migrate (default) or verify the schema; returns the head revision."""
    if settings.migrate_on_start:
        upgrade(settings.url)
    else:
        current, db_rev, head = schema_is_current(settings.url)
        if not current:
            raise SchemaOutOfDateError(
                f"the database schema is at revision {db_rev or 'none (empty database)'} but "
                f"this version of gradwatch needs {head}; run `gradwatch migrate` (or start "
                "with GRADWATCH_MIGRATE_ON_START=true)")
    return head_revision(settings.url)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.head_revision = prepare_database(settings)
    engine = build_engine(settings.url, busy_timeout_ms=settings.sqlite_busy_timeout_ms,
                          pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                          pool_timeout=settings.db_pool_timeout_seconds,
                          application_name="gradwatch-api")
    app.state.engine = engine
    app.state.sessionmaker = build_sessionmaker(engine)
    app.state.keys = KeyVerifier(app.state.sessionmaker, settings.key_cache_seconds,
                                 app.state.auth_throttle)
    if settings.blob_gc_on_start:  # what a crash left in the blob store (see app.blob_gc)
        collect_at_start(settings, app.state.sessionmaker)
    executor = build_executor(settings, app.state.sessionmaker)
    dispatcher = Dispatcher(settings, app.state.sessionmaker, executor)
    dispatcher.install()  # committed jobs go to the executor (see app.dispatch)
    cleanup = ModelCleanup(settings, app.state.sessionmaker)
    cleanup.install()  # a deleted job's model files go after the commit (see app.artifacts)
    app.state.executor, app.state.dispatcher = executor, dispatcher
    executor.start()
    dispatcher.start()
    where = (f"{settings.workers} local worker(s)" if executor.name == "local"
             else f"queue {settings.queue!r} at {settings.broker_url_for_logs}")
    log.info("gradwatch ready: database %s, executor %s, %s",
             engine.url.render_as_string(hide_password=True), executor.name, where)
    try:
        yield
    finally:
        dispatcher.stop()
        executor.shutdown(wait=True)
        dispatcher.uninstall()
        cleanup.uninstall()
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; ``settings`` default to the environment."""
    settings = settings or Settings()
    app = FastAPI(
        title="gradwatch",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        separate_input_output_schemas=False,
        docs_url=None,  # served offline by app.routers.pages
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_public else None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # uploads stream to disk under their own limit, GRADWATCH_MAX_UPLOAD_BYTES
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes,
                       exempt_paths=frozenset({"/v1/datasets"}))
    app.add_middleware(RejectNulMiddleware)
    app.state.auth_throttle = AuthThrottle(
        max_key_failures=settings.auth_max_failures,
        max_address_failures=settings.auth_max_address_failures,
        window=settings.auth_failure_window_seconds)
    registry, http_latency = build_registry(lambda: getattr(app.state, "sessionmaker", None),
                                            app.state.auth_throttle)
    app.state.metrics_registry = registry
    app.add_middleware(HttpMetricsMiddleware, histogram=http_latency)
    if settings.cors_origins:  # off by default: browsers on other sites get no access
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key",
                           "Last-Event-ID", "X-Request-ID", "Accept"],
            expose_headers=["Location", "Retry-After", "X-Request-ID", "WWW-Authenticate"],
            max_age=600)
    # outermost: every response carries the id, a 500 included
    app.add_middleware(RequestIdMiddleware, on_error=unexpected_error)
    auth = [Depends(require_api_key)]
    app.include_router(jobs.router, dependencies=auth)
    app.include_router(histories.router, dependencies=auth)
    app.include_router(events.router, dependencies=auth)
    app.include_router(webhooks.router, dependencies=auth)
    app.include_router(metrics.router, dependencies=auth)
    app.include_router(plots.router, dependencies=auth)  # issue 9: plots
    app.include_router(sweeps.router, dependencies=auth)
    app.include_router(datasets.router, dependencies=auth)  # issue 12: uploaded data sets
    app.include_router(models.router, dependencies=auth)  # issue 12: models out
    app.include_router(exports.router, dependencies=auth)  # issue 12: history export
    app.include_router(system.router)
    app.include_router(system.health_router)

    app.include_router(pages.router)  # issue 9: dashboard, /docs, /redoc (no CDN)
    app.mount("/static", pages.static_files(), name="static")
    if not settings.docs_public:  # GRADWATCH_DOCS_PUBLIC=false: the description needs a key
        @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
        def openapi_json() -> JSONResponse:
            return JSONResponse(app.openapi())

    schemas: dict[bool, dict[str, Any]] = {}  # by "does this server ask for keys"

    def openapi() -> dict[str, Any]:
        keyed = _server_has_keys(app)
        if keyed in schemas:
            return schemas[keyed]
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=app.openapi_tags)
        _add_spec_schema(schema)
        _problem_422(schema)
        _success_first(schema, app)
        _optional_parameters(schema)
        _no_nul_parameters(schema)
        _history_bounds(schema, settings)
        if not keyed:  # nothing to send: do not make clients believe otherwise
            _drop_security(schema)
        document(schema)  # issue 9: real examples, field and parameter descriptions
        schemas[keyed] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _server_has_keys(app: FastAPI) -> bool:
    """Whether /v1 asks for a key: an admin key is set, or a tenant key was created."""
    if app.state.settings.api_key:
        return True
    verifier: KeyVerifier | None = getattr(app.state, "keys", None)
    return verifier is not None and verifier.tenant_keys_exist()


def _add_spec_schema(schema: dict[str, Any]) -> None:
    from core.spec import TrainingSpec

    spec_schema = TypeAdapter(TrainingSpec).json_schema(
        ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in spec_schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components["TrainingSpec"] = spec_schema
    job_read = components.get("JobRead", {}).get("properties", {})
    if "spec" in job_read:
        job_read["spec"] = {"$ref": "#/components/schemas/TrainingSpec",
                            "description": "The validated spec, every default filled in."}
    components["Problem"] = PROBLEM_SCHEMA


def _problem_422(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 body; ours is problem+json."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "422" in responses and "application/json" in responses["422"].get("content", {}):
                responses["422"] = {
                    "description": "Invalid input; `errors` lists each field path.",
                    "content": {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}}}
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in schema.get("paths", {}).values() for op in path.values()
            if isinstance(op, dict)]


def _api_routes(routes: Any) -> Any:
    """The APIRoutes among ``routes``, looking into included routers."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI's wrapper of an included router
            yield from _api_routes(route.original_router.routes)
        elif hasattr(route, "routes"):
            yield from _api_routes(route.routes)


def _success_first(schema: dict[str, Any], app: FastAPI) -> None:
    """List each operation's documented success status first, then the others in order."""
    success: dict[str, str] = {}
    for route in _api_routes(app.routes):
        for method in route.methods:
            success[f"{method.lower()} {route.path}"] = str(route.status_code or 200)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            first = success.get(f"{method} {path}", "200")
            operation["responses"] = dict(sorted(
                operation["responses"].items(), key=lambda kv: (str(kv[0]) != first, str(kv[0]))))


def _optional_parameters(schema: dict[str, Any]) -> None:
    """An optional query or header parameter is absent or has a value: it is never `null`
    (FastAPI documents ``int | None`` as "integer or null", and a client sending the text
    "null" gets a 422)."""
    for operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            options = parameter.get("schema", {}).get("anyOf")
            if not options:
                continue
            kept = [o for o in options if o.get("type") != "null"]
            if len(kept) == 1 and len(kept) < len(options):
                inner = parameter["schema"]
                parameter["schema"] = {**{k: v for k, v in inner.items() if k != "anyOf"},
                                       **kept[0]}


def _no_nul_parameters(schema: dict[str, Any]) -> None:
    """Path and query strings may not hold NUL (RejectNulMiddleware answers 422): say so."""
    for operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            inner = parameter.get("schema", {})
            targets = [inner] if inner.get("type") == "string" else []
            if inner.get("type") == "array" and inner.get("items", {}).get("type") == "string":
                targets = [inner["items"]]
            if parameter.get("in") in ("path", "query"):
                for target in targets:
                    target.setdefault("pattern", "^[^\\u0000]*$")


def _history_bounds(schema: dict[str, Any], settings: Settings) -> None:
    """``max_points`` is bounded by a setting: show its value (the histories declare their
    own bound: past the setting they read every point, paged, rather than downsample)."""
    for operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            if parameter.get("name") == "max_points":
                parameter["schema"].setdefault("maximum", settings.max_history_points)


def _drop_security(schema: dict[str, Any]) -> None:
    """Without GRADWATCH_API_KEY no operation needs a key (nor is refused for wrong ones)."""
    for operation in _operations(schema):
        operation.pop("security", None)
        responses = operation.get("responses", {})
        responses.pop("401", None)
        if responses.get("429", {}).get("description") == AUTH_THROTTLED:
            del responses["429"]
    schema.get("components", {}).pop("securitySchemes", None)


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app`: build the app (reading settings) on first access, not at import.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
