"""The Celery executor and job recovery, without external services.

SQLite and Celery's in-memory broker stand in for PostgreSQL and Redis here; the same code
runs against the real ones in tests/test_integration.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import LONG_SPEC, SMALL_SPEC, make_settings
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.celery_app import TASK_NAME
from app.db import build_engine, build_sessionmaker, unit_of_work
from app.dispatch import Dispatcher
from app.executors.celery import CeleryExecutor, run_worker
from app.heartbeat import Heartbeat
from app.history import recorded_steps
from app.lifecycle import move_job, request_cancel
from app.migrate import upgrade
from app.models import HistoryChunk, Job, utcnow
from app.recovery import _settle, reap, requeue
from app.repositories import Claim, EventRepository, JobRepository
from app.run_end import finish_run as _finish
from app.services import submit_job, validate_spec
from app.settings import Settings
from app.sink import DatabaseSink
from app.worker import run_job
from app.worker_process import cancel_handback, configure_worker, request_handback
from core.telemetry import LayerRecord, StepRecord


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path, executor="celery", broker_url="memory://",
                             queue=f"test-{uuid.uuid4().hex[:8]}", heartbeat_timeout_seconds=2,
                             max_attempts=2)
    upgrade(settings.url)
    return settings


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = build_engine(settings.url)
    yield build_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(autouse=True)
def _no_handback_left_over() -> Iterator[None]:
    yield
    cancel_handback()


def new_job(factory: sessionmaker[Session], settings: Settings,
            spec: dict[str, Any] | None = None) -> str:
    with unit_of_work(factory) as session:
        job_id: str = submit_job(session, spec=validate_spec(spec or SMALL_SPEC, settings),
                                 settings=settings).job.id
        return job_id


def claim(factory: sessionmaker[Session], job_id: str, worker_id: str = "host-a:1") -> Claim:
    """What run_job's claim does: queued -> running, one more attempt."""
    with unit_of_work(factory) as session:
        job = move_job(session, job_id, "running", started_at=utcnow(), heartbeat_at=utcnow(),
                       worker_id=worker_id, attempts=Job.attempts + 1)
        assert job is not None
        return Claim(worker_id, job.attempts)


def silence(factory: sessionmaker[Session], job_id: str, seconds: float = 60) -> None:
    """As if the job's worker stopped beating ``seconds`` ago."""
    with unit_of_work(factory) as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def job_of(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        return job


def stored_steps(factory: sessionmaker[Session], job_id: str) -> list[int]:
    with factory() as session:
        return [r.step for r in recorded_steps(session, job_id)]


def records(steps: range) -> list[StepRecord]:
    return [StepRecord(step=s, epoch=0, loss=1.0, grad_norm=1.0, clipped_grad_norm=1.0, lr=0.1,
                       clipped=False, layers=[LayerRecord(0, 1.0, 1.0, 1.0, 0.1)])
            for s in steps]


def write(factory: sessionmaker[Session], job_id: str, run: Claim | None, steps: range
          ) -> DatabaseSink:
    sink = DatabaseSink(job_id, factory, total_steps=1000, flush_every=10_000, claim=run)
    sink.write_steps(records(steps))
    sink.flush()
    return sink


# ---- the Celery app ----


def test_the_celery_app_is_configured_for_long_jobs_and_lost_workers(settings: Settings) -> None:
    executor = CeleryExecutor(settings, None)  # type: ignore[arg-type]
    conf = executor.celery.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result and conf.task_serializer == "json"
    assert conf.task_default_queue == settings.queue
    longest_job = settings.max_job_runtime_seconds + settings.runtime_grace_seconds
    assert conf.task_time_limit >= settings.max_job_runtime_seconds
    assert conf.broker_transport_options["visibility_timeout"] > longest_job
    task = executor.celery.tasks[TASK_NAME]
    assert task.acks_late and task.reject_on_worker_lost


def test_a_published_message_carries_only_the_job_id(settings: Settings,
                                                     factory: sessionmaker[Session]) -> None:
    executor = CeleryExecutor(settings, factory)
    executor.submit("0f0e0d0c-0000-0000-0000-000000000001")
    with executor.celery.connection_for_read() as connection:
        message = connection.SimpleQueue(settings.queue).get(timeout=2)
        args, kwargs, _ = message.payload
        assert message.headers["task"] == TASK_NAME
        assert args == ["0f0e0d0c-0000-0000-0000-000000000001"] and kwargs == {}
        message.ack()
    executor.shutdown()


def test_the_executor_republishes_jobs_the_broker_never_got(settings: Settings,
                                                            factory: sessionmaker[Session]) -> None:
    fresh, forgotten = new_job(factory, settings), new_job(factory, settings)
    with unit_of_work(factory) as session:  # the API stopped between its commit and publishing
        session.execute(update(Job).where(Job.id == forgotten)
                        .values(created_at=utcnow() - timedelta(minutes=5)))
    executor = CeleryExecutor(settings, factory)
    Dispatcher(settings, factory, executor).sweep_once()
    assert job_of(factory, forgotten).enqueued_at is not None
    assert job_of(factory, fresh).enqueued_at is None  # may still be on its way
    with executor.celery.connection_for_read() as connection:
        queue = connection.SimpleQueue(settings.queue)
        message = queue.get(timeout=2)
        assert message.payload[0] == [forgotten]
        message.ack()
        assert queue.qsize() == 0
    executor.shutdown()


def test_gradwatch_worker_refuses_an_unmigrated_database(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, executor="celery", broker_url="memory://")
    assert run_worker(settings, concurrency=1) == 2
    assert "gradwatch migrate" in capsys.readouterr().err


# ---- the reaper ----


def test_the_reaper_requeues_a_silent_job_and_deletes_what_the_lost_run_recorded(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory, settings)
    first = claim(factory, job_id)
    write(factory, job_id, first, range(0, 50))
    assert reap(factory, settings) == []  # beating recently: alive
    silence(factory, job_id)
    [outcome] = reap(factory, settings)
    assert (outcome.job_id, outcome.action) == (job_id, "requeued")
    job = job_of(factory, job_id)
    assert job.status == "queued" and job.attempts == 1 and job.worker_id is None
    assert job.steps_completed == 0 and job.latest is None
    assert stored_steps(factory, job_id) == []  # deleted in the re-queue's transaction
    with factory() as session:
        last = EventRepository(session).since(job_id, 0)[-1].data
    assert last["status"] == "queued" and last["requeued"] and last["reason"].startswith("worker lost")
    # the next run starts the history over: no duplicate and no leftover rows
    second = claim(factory, job_id, "host-b:2")
    assert second.attempt == 2
    write(factory, job_id, second, range(0, 30))
    assert stored_steps(factory, job_id) == list(range(30))


def test_a_job_that_keeps_losing_its_worker_fails_with_worker_lost(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory, settings)
    for attempt in range(1, settings.max_attempts + 1):
        claim(factory, job_id, f"host:{attempt}")
        silence(factory, job_id)
        [outcome] = reap(factory, settings)
    assert outcome.action == "failed"
    job = job_of(factory, job_id)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error is not None and job.error.startswith("worker lost: no heartbeat from worker host:2")
    assert f"started {settings.max_attempts} times" in job.error


def test_a_silent_job_whose_cancel_was_requested_is_cancelled(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory, settings)
    claim(factory, job_id)
    with unit_of_work(factory) as session:
        assert request_cancel(session, job_id) is not None
    silence(factory, job_id)
    [outcome] = reap(factory, settings)
    assert outcome.action == "cancelled"
    assert job_of(factory, job_id).status == "cancelled"


def test_the_reaper_changes_nothing_if_the_worker_beats_after_it_looked(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory, settings)
    run = claim(factory, job_id)
    silence(factory, job_id)
    seen = job_of(factory, job_id)  # what the reaper read
    with unit_of_work(factory) as session:  # the worker was only slow
        assert JobRepository(session).heartbeat(job_id, run)
    with unit_of_work(factory) as session:
        assert _settle(session, settings, seen, lost="silent",
                       pinned=[Job.heartbeat_at == seen.heartbeat_at]) is None
    assert job_of(factory, job_id).status == "running"


def test_a_run_that_lost_its_job_writes_nothing_more(settings: Settings,
                                                     factory: sessionmaker[Session]) -> None:
    """A worker that was only partitioned away comes back after its job was re-run."""
    job_id = new_job(factory, settings)
    stale = claim(factory, job_id, "host-a:1")
    silence(factory, job_id)
    reap(factory, settings)
    current = claim(factory, job_id, "host-b:2")
    write(factory, job_id, current, range(0, 20))

    sink = write(factory, job_id, stale, range(0, 40))
    assert sink.lost and sink.should_stop() == "cancelled"
    assert stored_steps(factory, job_id) == list(range(20))  # only the current run's rows
    assert not _finish(factory, job_id, stale, status="succeeded", stop_reason="completed",
                       error=None, report=None, first_non_finite=None, steps_completed=40,
                       runtime=1.0)
    job = job_of(factory, job_id)
    assert job.status == "running" and job.worker_id == "host-b:2"


def test_the_heartbeat_thread_stamps_a_running_job_and_notices_when_it_is_taken(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    job_id = new_job(factory, settings)
    run = claim(factory, job_id)
    silence(factory, job_id)
    silenced = job_of(factory, job_id).heartbeat_at
    with Heartbeat(job_id, run, factory, interval=0.05) as heartbeat:
        deadline = time.monotonic() + 10
        while job_of(factory, job_id).heartbeat_at == silenced:
            assert time.monotonic() < deadline, "the heartbeat thread did not beat"
            time.sleep(0.05)
        assert reap(factory, settings) == []
        with unit_of_work(factory) as session:  # the job was given to another run
            assert requeue(session, job_id, where=[Job.status == "running"], reason="test")
        assert heartbeat.lost.wait(10)
    assert job_of(factory, job_id).heartbeat_at is None  # a lost run stamps nothing more


# ---- graceful shutdown ----


def test_a_worker_shutting_down_hands_its_job_back_without_spending_an_attempt(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    context = configure_worker(settings)
    job_id = new_job(factory, settings, LONG_SPEC)
    request_handback(0.5)  # what SIGUSR2 from the Celery main process does
    t0 = time.monotonic()
    assert run_job(job_id, context=context) == "requeued"
    assert time.monotonic() - t0 < 30
    job = job_of(factory, job_id)
    assert job.status == "queued" and job.attempts == 0
    assert job.enqueued_at is not None  # the Celery task re-queues its own message
    assert stored_steps(factory, job_id) == []
    with factory() as session:
        events = [e.data for e in EventRepository(session).since(job_id, 0)]
        assert "shut down" in events[-1]["reason"]
        assert session.scalar(select(func.count()).select_from(HistoryChunk)) == 0
    assert claim(factory, job_id, "host-b:2").attempt == 1  # the next run is its first
