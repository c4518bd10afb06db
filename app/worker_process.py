"""The set-up every process that runs jobs shares, local pool worker or Celery pool child.

:func:`setup_worker_process` caps the BLAS threads (workers x threads <= cores: idle BLAS
threads spin and slow their neighbours), tunes malloc, ignores Ctrl-C (the parent decides
when workers stop), listens for the hand-back signal of a warm shutdown, and builds the
process's database engine (:func:`configure_worker`); then it starts the process's webhook
delivery loop (:mod:`app.delivery`).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import build_engine, build_sessionmaker
from app.delivery import start_delivery_loop
from app.settings import Settings

__all__ = [
    "HANDBACK_SIGNAL",
    "WorkerContext",
    "cap_blas_threads",
    "configure_worker",
    "current_context",
    "handback_due",
    "limit_memory",
    "request_handback",
    "setup_worker_process",
    "tune_malloc",
]

BLAS_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# The parent tells the process running a job that a warm shutdown began.
HANDBACK_SIGNAL = signal.SIGUSR2


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    worker_id: str


_CONTEXT: WorkerContext | None = None


def configure_worker(settings: Settings | None = None) -> WorkerContext:
    """Build this process's engine (once) for ``settings`` (default: from the environment)."""
    global _CONTEXT
    settings = settings or Settings()
    if _CONTEXT is not None and _CONTEXT.settings == settings:
        return _CONTEXT
    if _CONTEXT is not None:
        _CONTEXT.engine.dispose()
    # one connection for the job, one for its heartbeat thread
    engine = build_engine(settings.url, busy_timeout_ms=settings.sqlite_busy_timeout_ms,
                          pool_size=2, max_overflow=2, application_name="gradwatch-worker")
    _CONTEXT = WorkerContext(settings, engine, build_sessionmaker(engine),
                             f"{socket.gethostname()}:{os.getpid()}")
    return _CONTEXT


def current_context() -> WorkerContext:
    """This process's context (configured from the environment on first use)."""
    return _CONTEXT or configure_worker()


# When this process should give its running job back to the queue (a warm shutdown's grace
# period ends); set from a signal handler, read by the sink every step.
_HANDBACK_AT: float | None = None


def request_handback(grace_seconds: float) -> None:
    """Let the job running in this process go on for ``grace_seconds``; if it has not
    finished by then, stop it and put it back in the queue (its history starts over)."""
    global _HANDBACK_AT
    at = time.monotonic() + grace_seconds
    _HANDBACK_AT = at if _HANDBACK_AT is None else min(_HANDBACK_AT, at)


def cancel_handback() -> None:
    """Forget a requested hand-back (tests; a process reused after one)."""
    global _HANDBACK_AT
    _HANDBACK_AT = None


def handback_due() -> bool:
    return _HANDBACK_AT is not None and time.monotonic() >= _HANDBACK_AT


def tune_malloc() -> bool:
    """Keep freed NumPy temporaries in the heap instead of unmapping them (glibc only).

    By default glibc serves blocks over 128 KiB with mmap and returns them on free, so every
    training step page-faults its activations and gradients in afresh; measured, that makes
    small-network training up to 2x slower. Returns False where mallopt is unavailable.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        ok &= libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def cap_blas_threads(threads: int) -> None:
    """Cap this process's BLAS/OpenMP pools to ``threads``."""
    for var in BLAS_ENV_VARS:
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def limit_memory(settings: Settings) -> int:
    """Cap this process's data memory (RLIMIT_DATA: heap and anonymous mappings) at the job
    memory budget plus the worker's own needs: an allocation past it raises MemoryError in
    the job (which then fails with that error) instead of exhausting the machine. Returns
    the limit set (0 where it cannot be set)."""
    import resource

    limit = settings.max_job_memory_bytes + settings.worker_memory_headroom_bytes
    try:
        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):
        return 0
    return limit


def setup_worker_process(settings: Settings, *, processes: int) -> WorkerContext:
    """Prepare this process to run jobs, one of ``processes`` on the machine."""
    limit_memory(settings)
    cap_blas_threads(settings.blas_threads_per_worker(processes))
    tune_malloc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    grace = settings.shutdown_grace_seconds
    signal.signal(HANDBACK_SIGNAL, lambda *_: request_handback(grace))
    context = configure_worker(settings)
    start_delivery_loop(settings, context.factory)  # webhooks go out from worker processes
    return context
