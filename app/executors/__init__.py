"""Executors run jobs by id. Each calls :func:`app.worker.run_job`; see base.Executor."""

from __future__ import annotations

from app.executors.base import Executor
from app.settings import Settings

__all__ = ["Executor", "build_executor"]


def build_executor(settings: Settings, factory: object) -> Executor:
    """The executor ``settings.executor`` names."""
    if settings.executor == "local":
        from app.executors.local import LocalExecutor

        return LocalExecutor(settings, factory)  # type: ignore[arg-type]
    from app.executors.celery import CeleryExecutor

    return CeleryExecutor(settings, factory)  # type: ignore[arg-type]
