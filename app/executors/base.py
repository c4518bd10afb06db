"""The executor protocol: hand a committed job id to something that runs it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Executor"]


@runtime_checkable
class Executor(Protocol):
    """Runs jobs by id. ``submit`` is called only after the job's row is committed."""

    name: str

    def start(self) -> None:
        """Start workers; re-submit queued jobs and recover orphaned running ones."""

    def submit(self, job_id: str) -> None:
        """Queue ``job_id``; never blocks on training and never raises for a job's failure."""

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop accepting work; jobs running in this process's workers are stopped (jobs on
        remote Celery workers go on)."""

    def healthy(self) -> bool:
        """True when jobs submitted now will run."""
