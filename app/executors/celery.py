"""The scale-out executor: job ids go through Redis to Celery workers on any machine.

The API process only publishes ids (after the commit) and runs the **reaper**: a daemon
thread that, every ``reaper_interval_seconds``, settles jobs whose worker went silent
(:func:`app.recovery.reap`: re-queue and publish again, or fail after ``max_attempts``) and
publishes queued jobs the broker never got (the API stopped between commit and publish, or
Redis was down). Several API processes may run it at once: every change is conditional.

Workers are ``gradwatch worker`` processes (:func:`run_worker`), each a Celery prefork
worker whose children run :func:`app.worker.run_job` — the same function the local executor
runs. Scaling out is starting more of them, on more machines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.celery_app import TASK_NAME, cap_blas_threads, create_celery
from app.db import unit_of_work
from app.models import utcnow
from app.recovery import reap
from app.repositories import JobRepository
from app.settings import Settings

__all__ = ["CeleryExecutor", "run_worker"]

log = logging.getLogger(__name__)

# a job younger than this may still be on its way to the broker (see services.IDEMPOTENCY_IN_FLIGHT)
_UNSENT_AFTER = timedelta(seconds=30)
_BROKER_CHECK_EVERY = 5.0


class CeleryExecutor:
    """Publishes job ids to the broker; reaps jobs whose worker vanished."""

    name = "celery"

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self.celery = create_celery(settings)
        self._task = self.celery.tasks[TASK_NAME]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unsent: set[str] = set()
        self._broker_checked = (0.0, False)

    # ---- Executor protocol ----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._maintain, name="gradwatch-reaper",
                                        daemon=True)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        if not self._publish(job_id):
            with self._lock:
                self._unsent.add(job_id)  # the reaper thread tries again

    def healthy(self) -> bool:
        """The reaper runs and the broker answers (checked at most every 5 s)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        checked_at, ok = self._broker_checked
        if time.monotonic() - checked_at > _BROKER_CHECK_EVERY:
            ok = self.broker_reachable()
            self._broker_checked = (time.monotonic(), ok)
        return ok

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the reaper. Running jobs belong to the workers and go on."""
        self._stopping.set()
        if self._thread is not None and wait:
            self._thread.join(timeout=30)
        self.celery.close()

    # ---- broker ----
    def broker_reachable(self) -> bool:
        try:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception as exc:
            log.warning("broker %s unreachable: %s", self.settings.broker_url, exc)
            return False

    def _publish(self, job_id: str) -> bool:
        try:
            self._task.apply_async(args=(job_id,))  # the message carries only the job id
            return True
        except Exception:
            log.exception("could not hand job %s to the broker; retrying in the background",
                          job_id)
            return False

    def _enqueue(self, job_id: str) -> None:
        if self._publish(job_id):
            with unit_of_work(self.factory) as session:
                JobRepository(session).mark_enqueued(job_id)
        else:
            with self._lock:
                self._unsent.add(job_id)

    # ---- the reaper thread ----
    def maintain_once(self) -> None:
        """One pass: settle jobs whose worker vanished, publish what the broker never got."""
        for outcome in reap(self.factory, self.settings, executor=self.name):
            if outcome.action == "requeued":
                self._enqueue(outcome.job_id)
        with self._lock:
            retry, self._unsent = list(self._unsent), set()
        with self.factory() as session:
            never_sent = JobRepository(session).unsent(utcnow() - _UNSENT_AFTER)
        for job_id in dict.fromkeys(retry + never_sent):
            self._enqueue(job_id)

    def _maintain(self) -> None:
        while not self._stopping.is_set():
            try:
                self.maintain_once()
            except Exception:  # the database may be away for a while: keep trying
                log.exception("reaper pass failed")
            self._stopping.wait(self.settings.reaper_interval_seconds)


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
