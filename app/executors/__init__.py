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
    try:
        from app.executors import celery as celery_executor  # type: ignore[attr-defined]
    except ImportError as exc:
        raise RuntimeError(
            "GRADWATCH_EXECUTOR=celery is not available in this build (scale-out issue); "
            "use GRADWATCH_EXECUTOR=local"
        ) from exc
    executor: Executor = celery_executor.CeleryExecutor(settings, factory)
    return executor
