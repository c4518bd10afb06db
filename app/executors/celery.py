"""The scale-out executor: job ids go through Redis to Celery workers on any machine.

The API process only publishes ids (after the commit, :mod:`app.dispatch`); its sweeper
re-publishes what the broker never accepted and applies the recovery policy to jobs whose
worker went silent (:mod:`app.recovery`), like for the local executor.

Workers are ``gradwatch worker`` processes (:func:`run_worker`), each a Celery prefork
worker whose children run :func:`app.worker.run_job` — the same function the local executor
runs. Scaling out is starting more of them, on more machines.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from sqlalchemy.orm import Session, sessionmaker

from app.celery_app import TASK_NAME, create_celery
from app.settings import Settings
from app.worker_process import cap_blas_threads

__all__ = ["CeleryExecutor", "run_worker"]

log = logging.getLogger(__name__)

_BROKER_CHECK_EVERY = 5.0


class CeleryExecutor:
    """Publishes job ids to the broker."""

    name = "celery"

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self.celery = create_celery(settings)
        self._task = self.celery.tasks[TASK_NAME]
        self._broker_checked = (0.0, False)

    # ---- Executor protocol ----
    def start(self) -> None:
        """Nothing to start here: the workers are other processes."""

    def submit(self, job_id: str) -> bool:
        try:
            self._task.apply_async(args=(job_id,))  # the message carries only the job id
            return True
        except Exception as exc:
            log.warning("could not hand job %s to the broker (%s); it is sent again later",
                        job_id, exc)
            return False

    def healthy(self) -> bool:
        """The broker answers (checked at most every 5 s)."""
        checked_at, ok = self._broker_checked
        if time.monotonic() - checked_at > _BROKER_CHECK_EVERY:
            ok = self.broker_reachable()
            self._broker_checked = (time.monotonic(), ok)
        return ok

    def shutdown(self, *, wait: bool = True) -> None:
        """Running jobs belong to the workers and go on."""
        self.celery.close()

    def broker_reachable(self) -> bool:
        try:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception as exc:
            log.warning("broker %s unreachable: %s", self.settings.broker_url, exc)
            return False


def run_worker(settings: Settings, *, concurrency: int | None = None) -> int:
    """``gradwatch worker``: a Celery worker on ``settings.queue``; blocks until it stops.

    SIGTERM is a warm shutdown: no new jobs; a running job has ``shutdown_grace_seconds`` to
    finish, then goes back to the queue. SIGQUIT (or a second Ctrl-C) is a cold shutdown.
    """
    from app.migrate import schema_is_current

    if not settings.is_postgres:
        print(f"gradwatch worker: workers on several machines need a shared database "
              f"(DATABASE_URL=postgresql+psycopg://...); using {settings.url}",
              file=sys.stderr)
    # the worker never migrates: that is `gradwatch migrate`'s job (one place, run once)
    try:
        current, db_revision, head = schema_is_current(settings.url)
    except Exception as exc:
        print(f"gradwatch worker: cannot reach the database: {exc}", file=sys.stderr)
        return 2
    if not current:
        print(f"gradwatch worker: the database schema is at revision "
              f"{db_revision or 'none (empty database)'} but this version needs {head}; run "
              "`gradwatch migrate` first", file=sys.stderr)
        return 2
    processes = concurrency or settings.workers or 1
    # before any pool process exists, so children inherit it (and re-applied in each child)
    cap_blas_threads(settings.blas_threads_per_worker(processes))
    celery = create_celery(settings)
    argv = [
        "worker", f"--concurrency={processes}", "--pool=prefork", f"--queues={settings.queue}",
        "--loglevel=INFO", f"--hostname=gradwatch-{os.getpid()}@%h",
        # worker-to-worker chatter gradwatch does not use; remote control stays available
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    try:
        celery.worker_main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
