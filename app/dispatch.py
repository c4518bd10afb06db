"""Enqueue that cannot lose a job, and the maintenance every API process runs.

A unit of work that creates a job *requests* its enqueueing (:func:`request_enqueue`: the
id waits in the session); the session's after-commit hook sends it (polar's pattern), so no
worker is told about a row it cannot see yet, and a rolled-back job is never sent.
``jobs.enqueued_at`` is set only after the executor accepted the id (the broker took the
message, or the local pool queued it).

What can still go wrong between the commit and the send — the API process dies, the broker
is down — leaves a ``queued`` job with ``enqueued_at`` NULL. The :class:`Dispatcher`'s
sweeper thread (one in every API process) re-sends those after
``GRADWATCH_ENQUEUE_RETRY_SECONDS``, and applies the recovery policy
(:func:`app.recovery.reap`) to jobs whose worker went silent. Sending twice is harmless: a
worker claims a job only while it is ``queued``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.db import AfterCommit, unit_of_work
from app.executors.base import Executor
from app.models import utcnow
from app.recovery import reap
from app.repositories import JobRepository
from app.settings import Settings

__all__ = ["Dispatcher", "request_enqueue"]

log = logging.getLogger(__name__)

_PENDING = "gradwatch.enqueue"


def request_enqueue(session: Session, job_id: str) -> None:
    """Send ``job_id`` to the executor once ``session``'s transaction has committed."""
    AfterCommit.queue(session, _PENDING, job_id)


class Dispatcher:
    """Sends requested job ids after commit; re-sends unsent ones; reaps lost workers."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session],
                 executor: Executor) -> None:
        self.settings, self.factory, self.executor = settings, factory, executor
        self._after_commit = AfterCommit(factory, _PENDING, self.send)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        """Send the ids requested by every committed session ``factory`` makes."""
        self._after_commit.install()

    def uninstall(self) -> None:
        self._after_commit.uninstall()

    def send(self, job_ids: Iterable[str]) -> int:
        """Hand ``job_ids`` to the executor; stamp ``enqueued_at`` on those it accepted, all
        in one transaction (a sweep's members are many). Never raises: what was not sent, or
        not marked sent, is found again by the sweeper. Returns how many were accepted and
        marked."""
        accepted = []
        for job_id in dict.fromkeys(job_ids):
            try:
                if self.executor.submit(job_id):
                    accepted.append(job_id)
            except Exception:
                log.exception("could not enqueue job %s; the sweeper retries", job_id)
        if not accepted:
            return 0
        try:
            with unit_of_work(self.factory) as session:
                JobRepository(session).mark_enqueued(*accepted)
        except Exception:  # sent, but not marked: the sweeper sends them again (harmless)
            log.exception("could not mark %d sent job(s); the sweeper re-sends them",
                          len(accepted))
            return 0
        return len(accepted)

    # ---- the sweeper ----
    def sweep_once(self) -> None:
        """Apply the recovery policy to silent jobs, then re-send what was never accepted."""
        for outcome in reap(self.factory, self.settings, executor=self.executor.name):
            if outcome.action == "requeued":
                self.send([outcome.job_id])
        before = utcnow() - timedelta(seconds=self.settings.enqueue_retry_seconds)
        with self.factory() as session:
            unsent = JobRepository(session).unsent(self.executor.name, before)
            deferred = JobRepository(session).deferred(self.executor.name)
        if unsent:
            log.warning("re-sending %d job(s) never accepted by the executor", len(unsent))
            self.send(unsent)
        if deferred:  # waiting for their tenant's running quota (app.quotas): try again
            self.send(deferred)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gradwatch-sweeper", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sweep_once()
            except Exception:  # the database may be away for a while: keep trying
                log.exception("sweeper pass failed")
            self._stopping.wait(self.settings.reaper_interval_seconds)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Dispatcher(executor={self.executor.name!r})"
