"""The heartbeat of a running job: proof, on the database's clock, that its worker lives."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from app.db import retry_on_locked, unit_of_work
from app.repositories import Claim, JobRepository

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat:
    """Stamps a running job's heartbeat from a daemon thread every ``interval`` seconds.

    The heartbeat proves the worker process alive independently of training progress (a
    slow step, the final diagnosis); it dies with the process, which is what the recovery
    policy (:func:`app.recovery.reap`) watches for. ``lost`` is set when the job no longer
    runs under ``claim``.
    """

    def __init__(self, job_id: str, claim: Claim, factory: sessionmaker[Session],
                 interval: float) -> None:
        self.job_id, self.claim, self.factory, self.interval = job_id, claim, factory, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> bool:
        with unit_of_work(self.factory) as session:
            return JobRepository(session).heartbeat(self.job_id, self.claim)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                alive = retry_on_locked(self._beat)
            except Exception:  # the database is away: try again next beat
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)
                continue
            if not alive and not self._stop.is_set():
                log.warning("job %s is no longer ours (%s): stopping", self.job_id, self.claim)
                self.lost.set()
                return
