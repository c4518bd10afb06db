"""The embedded executor: a few long-lived worker processes inside the server.

Each worker process runs one job at a time (``app.worker.run_job``), set up like a Celery
pool child (:func:`app.worker_process.setup_worker_process`). A dispatcher thread hands job
ids to idle workers and watches them: if a worker process dies (a crash, the OOM killer),
its job gets the same recovery policy as a lost Celery worker's (:func:`app.recovery.
worker_died`: re-queued with its history reset, up to GRADWATCH_MAX_ATTEMPTS starts, then
failed with the reason); a job killed for overrunning its runtime fails. The worker is
replaced; the server itself never goes down with a job.
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

from app.correlation import configure_logging
from app.db import unit_of_work
from app.recovery import worker_died
from app.repositories import JobRepository, as_utc
from app.settings import Settings
from app.worker_process import setup_worker_process

__all__ = ["LocalExecutor"]

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


def _worker_main(conn: Connection, settings_values: dict[str, Any]) -> None:
    """Entry point of a worker process: run job ids received on ``conn`` until told to stop."""
    settings = Settings(**settings_values)
    configure_logging(settings.log_format)
    context = setup_worker_process(settings, processes=max(1, settings.workers))
    from app.worker import run_job

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
    kill_reason: str | None = None  # killed for overrunning its runtime: the job fails
    lost_reason: str | None = None  # killed because it went silent: the job is re-queued
    claimed: bool = False  # the job was seen running under this worker

    @property
    def worker_id(self) -> str:
        """The id the worker claims jobs with (app.worker_process.configure_worker)."""
        return f"{socket.gethostname()}:{self.process.pid}"


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
        self._retried: set[str] = set()
        self._backoff = 0.0
        self._last_silence_check = 0.0
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

    def submit(self, job_id: str) -> bool:
        with self._lock:
            if job_id not in self._queued:
                self._queued.add(job_id)
                self._queue.append(job_id)
        self._wake()
        return True

    def healthy(self) -> bool:
        if self.settings.workers == 0:
            return True
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the workers; a job running in one goes back to the queue (without spending
        an attempt) and runs again when a server starts."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for slot in self._slots:
            job_id = slot.job_id
            self._stop_slot(slot, graceful=wait)
            if job_id is not None:
                self._safe(lambda job_id=job_id, slot=slot: worker_died(
                    self.factory, self.settings, job_id, worker_id=slot.worker_id,
                    cause="the server shut down", shutting_down=True))
        self._slots.clear()

    def running_jobs(self) -> list[str]:
        return [s.job_id for s in self._slots if s.job_id is not None]

    # ---- recovery ----
    def recover(self) -> None:
        """Settle the jobs of this machine's previous worker processes (the server was
        restarted or crashed), then queue every queued local job."""
        with self.factory() as session:
            running = [(j.id, j.worker_id) for j in
                       JobRepository(session).running(executor=self.name)]
        for job_id, worker_id in running:
            host, _, pid_text = (worker_id or "").rpartition(":")
            if host == self.host and pid_text.isdigit() and not _pid_alive(int(pid_text)):
                self._safe(lambda job_id=job_id, worker_id=worker_id: worker_died(
                    self.factory, self.settings, job_id, worker_id=worker_id or "",
                    cause=f"the worker process running this job ({worker_id}) is gone — the "
                          "server was restarted or the worker crashed"))
        with self.factory() as session:
            queued = JobRepository(session).queued_ids(executor=self.name)
        for job_id in queued:
            self.submit(job_id)

    # ---- the dispatcher thread ----
    def _dispatch(self) -> None:
        try:
            for i in range(self.settings.workers):
                self._slots.append(self._spawn(i))
            while not self._stopping.is_set():
                self._assign()
                self._wait_and_handle(timeout=0.5)
                self._watchdog()
                if time.monotonic() - self._last_silence_check >= 1.0:
                    self._last_silence_check = time.monotonic()
                    self._safe(self._kill_silent)
        except Exception:  # pragma: no cover - keep the server up, log loudly
            log.exception("local executor dispatcher crashed")

    def _spawn(self, index: int) -> _Slot:
        parent, child = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=_worker_main, name=f"gradwatch-worker-{index}", daemon=True,
            args=(child, self.settings.model_dump()))
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
            slot.job_id, slot.job_started, slot.claimed = job_id, time.monotonic(), False

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
                # the worker survived but could not run the job (its database went away...)
                self._safe(lambda: worker_died(
                    self.factory, self.settings, job_id, worker_id=slot.worker_id,
                    cause=f"the worker could not finish the job: {status[7:]}",
                    fail_reason=f"the worker could not finish the job: {status[7:]}"))

    def _on_death(self, slot: _Slot) -> None:
        if slot not in self._slots:
            return
        slot.process.join(timeout=1)
        cause = (slot.kill_reason or slot.lost_reason
                 or f"the worker process running this job died ({_signal_name(slot.process.exitcode)})")
        job_id = slot.job_id
        if job_id is not None:
            log.error("worker %s died running job %s: %s", slot.process.pid, job_id, cause)
            outcome = None
            try:
                outcome = worker_died(self.factory, self.settings, job_id,
                                      worker_id=slot.worker_id, cause=cause,
                                      fail_reason=slot.kill_reason)
            except Exception:
                log.exception("could not settle job %s; the sweeper will", job_id)
            if outcome is not None and outcome.action == "requeued":
                self._resubmit(job_id)
            elif outcome is None and job_id not in self._retried:
                # died before claiming the job: not the job's fault, run it again once
                self._retried.add(job_id)
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

    def _resubmit(self, job_id: str) -> None:
        """Queue a re-queued job again and record that it was accepted."""
        self.submit(job_id)
        with unit_of_work(self.factory) as session:
            JobRepository(session).mark_enqueued(job_id)

    def _kill_silent(self) -> None:
        """Kill a worker whose job's heartbeat is older than the timeout (by the database's
        clock: a frozen or stuck process, perhaps holding SQLite's write lock), or whose job
        the recovery policy already gave to another run. Its death re-queues the job."""
        busy = {s.job_id: s for s in self._slots if s.job_id is not None and
                s.kill_reason is None and s.lost_reason is None}
        if not busy:
            return
        timeout = self.settings.heartbeat_timeout_seconds
        with self.factory() as session:
            jobs = JobRepository(session)
            now = jobs.clock()
            seen = {job_id: jobs.get(job_id) for job_id in busy}
        for job_id, slot in busy.items():
            job = seen.get(job_id)
            if job is None or job.status not in ("queued", "running"):
                continue  # finished (its worker is about to say so) or deleted
            if job.status == "running" and job.worker_id == slot.worker_id:
                slot.claimed = True
                beat = job.heartbeat_at or job.started_at
                silent = (now - as_utc(beat)).total_seconds() if beat is not None else 0.0
                if silent <= timeout:
                    continue
                slot.lost_reason = (f"no heartbeat from worker {slot.worker_id} for "
                                    f"{silent:.0f} s (frozen or stuck); it was killed")
            elif slot.claimed:
                slot.lost_reason = "its job was given to another run; the worker was killed"
            else:
                continue  # not claimed yet
            log.error("killing worker %s: %s", slot.process.pid, slot.lost_reason)
            slot.process.kill()

    def _watchdog(self) -> None:
        limit = self.settings.max_job_runtime_seconds
        grace = self.settings.runtime_grace_seconds  # the trainer stops itself at `limit`
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


