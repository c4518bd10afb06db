"""The embedded executor: a few long-lived worker processes inside the server.

Each worker process runs one job at a time (``app.worker.run_job``) and caps its BLAS
threads so that workers x threads <= cores. A dispatcher thread hands job ids to idle
workers and watches them: if a worker process dies (a crash, the OOM killer, a job that
overran its runtime and had to be killed), only its own job fails — with a readable error —
and the worker is replaced. The server itself never goes down with a job.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.models import utcnow
from app.repositories import JobRepository
from app.settings import Settings

__all__ = ["LocalExecutor", "tune_malloc"]

log = logging.getLogger(__name__)

_RESTART_BACKOFF_MAX = 30.0


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " — often the out-of-memory killer" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


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


def _worker_main(conn: Connection, settings_values: dict[str, Any], blas_threads: int) -> None:
    """Entry point of a worker process: run job ids received on ``conn`` until told to stop."""
    tune_malloc()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(blas_threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    from threadpoolctl import threadpool_limits

    from app.worker import configure_worker, run_job

    threadpool_limits(limits=blas_threads)
    context = configure_worker(Settings(**settings_values))
    with contextlib.suppress(Exception):  # warm up before the first job; errors surface there
        import core.trainer  # noqa: F401
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job_id = conn.recv()
        except (EOFError, OSError):
            break
        if job_id is None:
            break
        try:
            status = run_job(job_id, context=context)
        except BaseException as exc:  # run_job handles training errors; this is the DB etc.
            logging.getLogger(__name__).exception("worker error on job %s", job_id)
            status = f"error: {type(exc).__name__}: {str(exc)[:500]}"
        try:
            conn.send(("done", job_id, status))
        except (BrokenPipeError, OSError):
            break
    context.engine.dispose()


@dataclass
class _Slot:
    index: int
    process: BaseProcess
    conn: Connection
    ready: bool = False
    job_id: str | None = None
    job_started: float = 0.0
    spawned_at: float = field(default_factory=time.monotonic)
    kill_reason: str | None = None


class LocalExecutor:
    """Process-pool executor with per-job failure isolation (see the module docstring)."""

    name = "local"

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self._mp = multiprocessing.get_context("spawn")
        self._queue: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = self._mp.Pipe(duplex=False)
        self._slots: list[_Slot] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._requeued: set[str] = set()
        self._backoff = 0.0
        self._last_reap = 0.0
        self.host = socket.gethostname()

    # ---- public API ----
    def start(self) -> None:
        self.recover()
        if self.settings.workers == 0:
            log.info("GRADWATCH_WORKERS=0: jobs stay queued in this process")
            return
        self._thread = threading.Thread(target=self._dispatch, name="gradwatch-dispatcher",
                                        daemon=True)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
            self._queue.append(job_id)
        self._wake()

    def healthy(self) -> bool:
        if self.settings.workers == 0:
            return True
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, *, wait: bool = True) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for slot in self._slots:
            self._stop_slot(slot, graceful=wait)
            if slot.job_id is not None:
                self._fail(slot.job_id, "the server shut down while this job was running; "
                                        "submit it again")
        self._slots.clear()

    def running_jobs(self) -> list[str]:
        return [s.job_id for s in self._slots if s.job_id is not None]

    # ---- recovery ----
    def recover(self) -> None:
        """Fail running jobs whose worker is gone; re-submit queued jobs."""
        with self.factory() as session:
            running = [(j.id, j.worker_id, j.heartbeat_at) for j in
                       JobRepository(session).running(executor=self.name)]
            queued = JobRepository(session).queued_ids()
        for job_id, worker_id, heartbeat in running:
            reason = self._orphan_reason(worker_id, heartbeat, at_start=True)
            if reason:
                log.warning("recovering orphaned job %s: %s", job_id, reason)
                self._fail(job_id, reason)
        for job_id in queued:
            self.submit(job_id)

    def _orphan_reason(self, worker_id: str | None, heartbeat: Any, *, at_start: bool) -> str | None:
        host, _, pid_text = (worker_id or "").rpartition(":")
        if host == self.host and pid_text.isdigit():
            pid = int(pid_text)
            if pid in {s.process.pid for s in self._slots}:
                return None
            if not _pid_alive(pid):
                return (f"the worker process running this job ({worker_id}) is gone — the "
                        "server was restarted or the worker crashed; submit it again")
            if at_start:
                return None
        if heartbeat is None:
            return None
        if heartbeat.tzinfo is None:
            heartbeat = heartbeat.replace(tzinfo=utcnow().tzinfo)
        silent = (utcnow() - heartbeat).total_seconds()
        if silent > self.settings.heartbeat_timeout_seconds:
            return (f"lost worker {worker_id}: no heartbeat for {silent:.0f} s "
                    f"(GRADWATCH_HEARTBEAT_TIMEOUT_SECONDS={self.settings.heartbeat_timeout_seconds:g})")
        return None

    def _reap(self) -> None:
        """Fail running jobs nobody is working on any more (dead pid or silent heartbeat)."""
        mine = set(self.running_jobs())
        with self.factory() as session:
            candidates = [(j.id, j.worker_id, j.heartbeat_at)
                          for j in JobRepository(session).running(executor=self.name)
                          if j.id not in mine]
        for job_id, worker_id, heartbeat in candidates:
            reason = self._orphan_reason(worker_id, heartbeat, at_start=False)
            if reason:
                log.warning("reaping job %s: %s", job_id, reason)
                self._fail(job_id, reason)

    # ---- the dispatcher thread ----
    def _dispatch(self) -> None:
        try:
            for i in range(self.settings.workers):
                self._slots.append(self._spawn(i))
            while not self._stopping.is_set():
                self._assign()
                self._wait_and_handle(timeout=0.5)
                self._watchdog()
                if time.monotonic() - self._last_reap > 30:
                    self._last_reap = time.monotonic()
                    self._safe(self._reap)
        except Exception:  # pragma: no cover - keep the server up, log loudly
            log.exception("local executor dispatcher crashed")

    def _spawn(self, index: int) -> _Slot:
        parent, child = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=_worker_main, name=f"gradwatch-worker-{index}", daemon=True,
            args=(child, self.settings.model_dump(), self.settings.blas_threads_per_worker()))
        process.start()
        child.close()
        return _Slot(index=index, process=process, conn=parent)

    def _assign(self) -> None:
        for slot in self._slots:
            if not (slot.ready and slot.job_id is None):
                continue
            with self._lock:
                if not self._queue:
                    return
                job_id = self._queue.popleft()
                self._queued.discard(job_id)
            try:
                slot.conn.send(job_id)
            except (BrokenPipeError, OSError):
                with self._lock:
                    self._queue.appendleft(job_id)
                    self._queued.add(job_id)
                continue
            slot.job_id, slot.job_started = job_id, time.monotonic()

    def _wait_and_handle(self, timeout: float) -> None:
        waitables: list[Any] = [self._wake_r]
        for slot in self._slots:
            waitables += [slot.conn, slot.process.sentinel]
        for ready in wait(waitables, timeout=timeout):
            if ready is self._wake_r:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
                continue
            for slot in list(self._slots):
                if ready is slot.conn:
                    self._on_message(slot)
                elif ready == slot.process.sentinel:
                    self._on_death(slot)

    def _on_message(self, slot: _Slot) -> None:
        try:
            message = slot.conn.recv()
        except (EOFError, OSError):
            self._on_death(slot)
            return
        if message[0] == "ready":
            slot.ready = True
            self._backoff = 0.0
        elif message[0] == "done":
            _, job_id, status = message
            slot.job_id = None
            if isinstance(status, str) and status.startswith("error"):
                self._fail(job_id, f"the worker could not finish the job: {status[7:]}")

    def _on_death(self, slot: _Slot) -> None:
        if slot not in self._slots:
            return
        slot.process.join(timeout=1)
        cause = slot.kill_reason or f"the worker process running this job died ({_signal_name(slot.process.exitcode)})"
        job_id = slot.job_id
        if job_id is not None:
            log.error("worker %s died running job %s: %s", slot.process.pid, job_id, cause)
            if not self._fail(job_id, cause) and job_id not in self._requeued:
                # died before claiming the job: not the job's fault, run it again once
                self._requeued.add(job_id)
                self.submit(job_id)
        else:
            log.error("worker %s died while idle (%s)", slot.process.pid,
                      _signal_name(slot.process.exitcode))
        slot.conn.close()
        index = self._slots.index(slot)
        if self._stopping.is_set():
            self._slots.pop(index)
            return
        if time.monotonic() - slot.spawned_at < 5 and job_id is None:
            self._backoff = min(_RESTART_BACKOFF_MAX, max(0.5, self._backoff * 2))
            self._stopping.wait(self._backoff)
        self._slots[index] = self._spawn(slot.index)

    def _watchdog(self) -> None:
        limit = self.settings.max_job_runtime_seconds
        grace = max(30.0, 0.1 * limit)  # the trainer stops itself at `limit`; this is the backstop
        now = time.monotonic()
        for slot in self._slots:
            if slot.job_id is not None and slot.kill_reason is None and now - slot.job_started > limit + grace:
                slot.kill_reason = (
                    f"the job exceeded the maximum runtime of {limit:g} s "
                    "(GRADWATCH_MAX_JOB_RUNTIME_SECONDS) and did not stop; its worker was killed")
                log.error("killing worker %s: %s", slot.process.pid, slot.kill_reason)
                slot.process.kill()

    # ---- helpers ----
    def _wake(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._wake_w.send_bytes(b"x")

    def _stop_slot(self, slot: _Slot, *, graceful: bool) -> None:
        try:
            if graceful and slot.job_id is None:
                slot.conn.send(None)
                slot.process.join(timeout=2)
        except (BrokenPipeError, OSError):
            pass
        if slot.process.is_alive():
            slot.process.terminate()
            slot.process.join(timeout=2)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=1)
        slot.conn.close()

    def _fail(self, job_id: str, reason: str) -> bool:
        from app.worker import fail_job

        try:
            return fail_job(self.factory, job_id, reason)
        except Exception:
            log.exception("could not mark job %s failed", job_id)
            return False

    def _safe(self, fn: Any) -> None:
        try:
            fn()
        except Exception:
            log.exception("local executor maintenance failed")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


