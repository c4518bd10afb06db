"""The ``gradwatch`` command: ``serve``, ``migrate``, ``worker``, ``keys``, ``gc``; and the client commands
(``submit``, ``follow``, ``diagnose``, ``repair``, ``plot``, ``jobs``, ``preflight``) from
:mod:`client.cli`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.settings import Settings
from client.cli import register as register_client_commands

if TYPE_CHECKING:
    from app.keys import NewKey
    from app.quotas import Limits

__all__ = ["build_parser", "create_key", "main", "set_quota"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.migrate import upgrade

    settings = Settings()
    upgrade(settings.url)  # `serve` always migrates first
    print(f"gradwatch: database {settings.url_for_logs} migrated; serving on "
          f"http://{args.host}:{args.port} (Swagger UI at /docs)", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port,
                log_level=args.log_level, proxy_headers=True,
                log_config=None)  # keep app.correlation's handlers (JSON lines by default)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from app.db import build_engine
    from app.migrate import current_revision, downgrade, upgrade

    settings = Settings()
    if args.revision.startswith("-") or args.downgrade:
        downgrade(settings.url, args.revision)
    else:
        upgrade(settings.url, args.revision)
    engine = build_engine(settings.url, pool=False)
    try:
        print(f"gradwatch: {settings.url_for_logs} is at revision {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def _worker(args: argparse.Namespace) -> int:
    settings = Settings()
    if settings.executor != "celery":
        print("gradwatch worker runs a Celery worker and requires GRADWATCH_EXECUTOR=celery "
              "(scale-out setup). With the default local executor, `gradwatch serve` runs the "
              "workers itself.", file=sys.stderr)
        return 2
    from app.executors.celery import run_worker

    return run_worker(settings, concurrency=args.concurrency)


def _keys_session(settings: Settings) -> Any:
    """A session on the service's database (its schema must be current)."""
    from app.db import build_engine, build_sessionmaker
    from app.migrate import schema_is_current

    current, revision, head = schema_is_current(settings.url)
    if not current:
        raise SystemExit(f"gradwatch: the database {settings.url_for_logs} is at revision "
                         f"{revision or 'none'}, not {head}: run `gradwatch migrate` first")
    engine = build_engine(settings.url, pool=False)
    return engine, build_sessionmaker(engine)


def create_key(settings: Settings, tenant: str, label: str | None = None) -> NewKey:
    """``gradwatch keys create``: a new key for ``tenant``, committed."""
    from app.keys import create_key as create

    engine, factory = _keys_session(settings)
    try:
        with factory() as session:
            new = create(session, tenant=tenant, label=label)
            session.commit()
            return new
    finally:
        engine.dispose()


def _keys_create(args: argparse.Namespace) -> int:
    from app.keys import TenantNameError

    try:
        new = create_key(Settings(), args.tenant, args.label)
    except TenantNameError as exc:
        print(f"gradwatch: {exc}", file=sys.stderr)
        return 2
    print(f"created key {new.key_id} for tenant {new.tenant!r}"
          + (f" ({new.label})" if new.label else "")
          + ". It is shown only now (gradwatch keeps its hash): store it in your secret "
            "store. Send it as `Authorization: Bearer <key>`.", file=sys.stderr)
    print(new.key)  # the last (and only) line on stdout
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from app.keys import revoke_key

    settings = Settings()
    engine, factory = _keys_session(settings)
    try:
        with factory() as session:
            row = revoke_key(session, args.key_id)
            session.commit()
            if row is None:
                print(f"gradwatch: there is no key {args.key_id!r} (see `gradwatch keys list`)",
                      file=sys.stderr)
                return 1
            print(f"key {row.key_id} of tenant {row.tenant!r} is revoked (since "
                  f"{row.revoked_at}); servers stop accepting it within "
                  f"{settings.key_cache_seconds:g} s (GRADWATCH_KEY_CACHE_SECONDS)")
    finally:
        engine.dispose()
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from app.keys import list_keys

    engine, factory = _keys_session(Settings())
    try:
        with factory() as session:
            rows: list[dict[str, Any]] = [{"key_id": k.key_id, "tenant": k.tenant,
                                          "label": k.label,
                     "created_at": k.created_at.isoformat(),
                     "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
                    for k in list_keys(session, tenant=args.tenant)]
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'KEY ID':<14}{'TENANT':<24}{'CREATED':<27}{'REVOKED':<27}LABEL")
    for r in rows:
        print(f"{r['key_id']:<14}{r['tenant']:<24}{r['created_at'][:25]:<27}"
              f"{(r['revoked_at'] or '-')[:25]:<27}{r['label'] or ''}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from app.blob_gc import collect_garbage
    from app.blobstore import blob_store

    settings = Settings()
    grace = settings.blob_gc_grace_seconds if args.grace_seconds is None else args.grace_seconds
    engine, factory = _keys_session(settings)
    try:
        report = collect_garbage(blob_store(settings), factory, grace_seconds=grace,
                                 dry_run=args.dry_run, force=args.force)
    finally:
        engine.dispose()
    verb = "would remove" if args.dry_run else "removed"
    for item in report.removed:
        age = f", {item.age_seconds / 3600:.1f} h old" if item.kind != "directory" else ""
        print(f"{verb} {item.kind} {item.name} ({item.size} bytes{age}): {item.reason}")
    print(f"gradwatch gc ({settings.blob_dir}): {report.summary(args.dry_run)}")
    return 1 if report.refused else 0


def set_quota(settings: Settings, tenant: str, *, max_running: int | None = None,
              max_queued: int | None = None, reset: bool = False) -> Limits:
    """``gradwatch tenants quota``: change what is given (``reset``: back to the settings);
    returns the quotas now in force."""
    from app.keys import validate_tenant
    from app.models import TenantQuota
    from app.quotas import limits, set_limits

    validate_tenant(tenant)
    engine, factory = _keys_session(settings)
    try:
        with factory() as session:
            row = session.get(TenantQuota, tenant)
            running = None if reset or row is None else row.max_running_jobs
            queued = None if reset or row is None else row.max_queued_jobs
            if reset or max_running is not None or max_queued is not None:
                set_limits(session, tenant,
                           max_running_jobs=running if max_running is None else max_running,
                           max_queued_jobs=queued if max_queued is None else max_queued)
                session.commit()
            return limits(session, tenant, settings)
    finally:
        engine.dispose()


def _tenants_quota(args: argparse.Namespace) -> int:
    from app.keys import TenantNameError

    try:
        now = set_quota(Settings(), args.tenant, max_running=args.max_running,
                        max_queued=args.max_queued, reset=args.reset)
    except (TenantNameError, ValueError) as exc:
        print(f"gradwatch: {exc}", file=sys.stderr)
        return 2
    def origin(own: bool) -> str:
        return "its own" if own else "the setting"

    print(f"tenant {args.tenant!r}: at most {now.max_running_jobs} running jobs "
          f"({origin(now.own_running)}), {now.max_queued_jobs} queued jobs "
          f"({origin(now.own_queued)})")
    return 0


def _add_keys_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="tenant API keys: create, revoke, list (run where the "
                                       "server's DATABASE_URL is set)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key for a tenant; prints it once")
    create.add_argument("--tenant", required=True,
                        help="tenant name: 1-40 of a-z, 0-9, inner hyphens")
    create.add_argument("--label", default=None, help="a note, e.g. who holds the key")
    create.set_defaults(func=_keys_create)
    revoke = actions.add_parser("revoke", help="revoke a key by its id (see `keys list`)")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_keys_revoke)
    listing = actions.add_parser("list", help="list keys (ids, tenants, dates; no secrets)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(func=_keys_list)
    tenants = sub.add_parser("tenants", help="per-tenant settings (quotas)")
    tenant_actions = tenants.add_subparsers(dest="tenants_command", required=True)
    quota = tenant_actions.add_parser(
        "quota", help="show or change a tenant's quotas (default: the GRADWATCH_TENANT_* "
                      "settings)")
    quota.add_argument("tenant")
    quota.add_argument("--max-running", type=_count, default=None, metavar="N",
                       help="jobs of the tenant that run at once")
    quota.add_argument("--max-queued", type=_count, default=None, metavar="N",
                       help="queued jobs of the tenant (more is a 429)")
    quota.add_argument("--reset", action="store_true", help="back to the settings")
    quota.set_defaults(func=_tenants_quota)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a number of jobs, 0 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("a number of seconds, 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by the tests to check the Docker image's commands)."""
    parser = argparse.ArgumentParser(prog="gradwatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="migrate the database, then serve the API and workers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser("migrate", help="bring the database schema to the latest revision")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--downgrade", action="store_true", help="downgrade to REVISION")
    migrate.set_defaults(func=_migrate)
    worker = sub.add_parser("worker", help="run a Celery worker (GRADWATCH_EXECUTOR=celery)")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="job processes (default GRADWATCH_WORKERS: one per core)")
    worker.set_defaults(func=_worker)
    _add_keys_commands(sub)
    gc = sub.add_parser(
        "gc", help="remove from the blob store what a crash left behind: blobs no data set or "
                   "job refers to, abandoned upload staging files, empty model directories "
                   "(the server does it at start-up)")
    gc.add_argument("--grace-seconds", type=_seconds, default=None, metavar="S",
                    help="never touch files younger than this (default "
                         "GRADWATCH_BLOB_GC_GRACE_SECONDS, 3600)")
    gc.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    gc.add_argument("--force", action="store_true",
                    help="remove blobs even when the database holds no job and no data set")
    gc.set_defaults(func=_gc)
    register_client_commands(sub)  # submit, follow, diagnose, ... (HTTP only)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.correlation import configure_logging

    configure_logging(os.environ.get("GRADWATCH_LOG_FORMAT", "json").lower(), logging.INFO)
    try:
        code: int = args.func(args)
    except ValidationError as exc:  # the settings (environment) are not valid: say which
        print(f"gradwatch: invalid settings: {_settings_errors(exc)}", file=sys.stderr)
        return 2
    return code


def _settings_errors(exc: ValidationError) -> str:
    """The settings' errors, without echoing any value (a value may be a secret)."""
    return "; ".join(f"GRADWATCH_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                     for e in exc.errors())


if __name__ == "__main__":
    sys.exit(main())
