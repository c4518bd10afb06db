"""The Celery application: one task, ``gradwatch.run_job(job_id)``, and the worker hooks.

``gradwatch worker`` runs it (:func:`app.executors.celery.run_worker`);
``celery -A app.celery_app worker -Q gradwatch`` works too (settings from the environment).
Building the app connects to nothing; the module-level ``app`` is built on first access.

Delivery is "at least once", and harmless when more: the message carries only the job id,
it is acknowledged after the job ran (``acks_late``) and re-queued when the process running
it dies (``reject_on_worker_lost``), and :func:`app.worker.run_job` claims a job only while
it is ``queued``, so a second delivery of the same id is skipped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject

from app.settings import Settings

__all__ = ["TASK_NAME", "create_celery"]

log = logging.getLogger(__name__)

TASK_NAME = "gradwatch.run_job"

_SETTINGS: Settings | None = None  # what the app was built with (pool children inherit it)
_POOL_SIZE: int | None = None  # the worker's concurrency, set in the main process


def create_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` with the ``gradwatch.run_job`` task registered."""
    global _SETTINGS
    _SETTINGS = settings
    celery = Celery("gradwatch", broker=settings.broker_url, set_as_current=False)
    transport: dict[str, Any] = {
        # Redis re-delivers an unacknowledged message after this long: longer than any job
        # may run, or a second worker would get a job that is still running.
        "visibility_timeout": settings.broker_visibility_timeout_seconds,
    }
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    celery.conf.update(
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # status and results live in the database
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # hard limit: the trainer stops itself at the runtime limit; this is the backstop
        task_time_limit=int(settings.max_job_runtime_seconds + settings.runtime_grace_seconds),
        worker_prefetch_multiplier=1,  # jobs are long: never hold one a free worker could run
        worker_disable_prefetch=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 2},
    )

    # shared=False: the task belongs to this app only (apps built for other settings, as in
    # tests, each register their own)
    @celery.task(name=TASK_NAME, shared=False,  # type: ignore[untyped-decorator]
                 acks_late=True, reject_on_worker_lost=True)
    def run_job_task(job_id: str) -> str:
        from app.worker import run_job

        status: str = run_job(job_id)
        if status == "requeued":  # handed back at shutdown: the message goes back with it
            raise Reject(f"job {job_id} handed back at worker shutdown", requeue=True)
        return status

    return celery


# ---- worker hooks (they fire only inside a Celery worker) ----

@signals.after_setup_logger.connect  # type: ignore[untyped-decorator]
@signals.after_setup_task_logger.connect  # type: ignore[untyped-decorator]
def _json_log_lines(logger: logging.Logger | None = None, **_: Any) -> None:
    """Celery's log handlers write JSON lines too (GRADWATCH_LOG_FORMAT=json, the default)."""
    from app.correlation import JsonFormatter

    if logger is None or (_SETTINGS or Settings()).log_format != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _remember_concurrency(sender: Any = None, **_: Any) -> None:
    global _POOL_SIZE
    concurrency = getattr(sender, "concurrency", None)
    _POOL_SIZE = concurrency if isinstance(concurrency, int) and concurrency > 0 else None


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _init_pool_process(**_: Any) -> None:
    """In each pool child: the set-up every job-running process shares."""
    from app.worker_process import setup_worker_process

    settings = _SETTINGS or Settings()
    setup_worker_process(settings, processes=_POOL_SIZE or settings.workers or 1)


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _hand_back_on_warm_shutdown(how: str = "", **_: Any) -> None:
    """Warm shutdown (SIGTERM): Celery stops taking jobs and waits for the running ones.
    Each gets ``shutdown_grace_seconds`` to finish, then goes back to the queue."""
    if how != "Warm":
        return
    from celery.worker import state

    from app.worker_process import HANDBACK_SIGNAL, request_handback

    grace = (_SETTINGS or Settings()).shutdown_grace_seconds
    for request in list(state.active_requests):
        pid = getattr(request, "worker_pid", None)
        try:
            if pid is None or pid == os.getpid():  # the solo pool runs jobs in this process
                request_handback(grace)
            else:
                os.kill(pid, HANDBACK_SIGNAL)
        except ProcessLookupError:
            pass


def __getattr__(name: str) -> Any:
    # `celery -A app.celery_app worker`: build the app from the environment on first access
    if name in ("app", "celery"):
        application = create_celery(Settings())
        globals()["app"] = globals()["celery"] = application
        return application
    raise AttributeError(name)
