"""The executor protocol: hand a committed job id to something that runs it.

Both executors run :func:`app.worker.run_job` in processes set up by
:func:`app.worker_process.setup_worker_process`, and share one recovery policy
(:mod:`app.recovery`), applied by every API process's sweeper (:mod:`app.dispatch`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Executor"]


@runtime_checkable
class Executor(Protocol):
    """Runs jobs by id. ``submit`` is called only after the job's row is committed."""

    name: str

    def start(self) -> None:
        """Start workers (the local executor also takes back the queued jobs of this machine)."""

    def submit(self, job_id: str) -> bool:
        """Queue ``job_id``; True once it was accepted (the broker took the message, the
        local pool queued it). Never blocks on training; False instead of raising."""

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop accepting work; jobs running in this process's workers are stopped (jobs on
        remote Celery workers go on)."""

    def healthy(self) -> bool:
        """True when jobs submitted now will run."""
