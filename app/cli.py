"""The ``gradwatch`` command: ``serve``, ``migrate``, ``worker``; and the client commands
(``submit``, ``follow``, ``diagnose``, ``repair``, ``plot``, ``jobs``, ``preflight``) from
:mod:`client.cli`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from app.settings import Settings
from client.cli import register as register_client_commands

__all__ = ["build_parser", "main"]


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
    register_client_commands(sub)  # submit, follow, diagnose, ... (HTTP only)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.correlation import configure_logging

    configure_logging(os.environ.get("GRADWATCH_LOG_FORMAT", "json").lower(), logging.INFO)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
