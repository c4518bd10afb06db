"""Storage: non-finite round trip, batch inserts, rollups, downsampling rules, job states."""

from __future__ import annotations

import math
import threading
import uuid
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app.db import unit_of_work
from app.downsampling import (
    RollupBuilder,
    Summary,
    downsample_points,
    group_starts,
    plan_buckets,
    reduce_segments,
)
from app.history import stored_history
from app.history_store import (
    MAX_CHUNK_STEPS,
    StepColumns,
    decode_chunk,
    decode_rollups,
    encode_chunk,
    n_series,
    series_index,
)
from app.lifecycle import TERMINAL, move_job, request_cancel
from app.models import Job, utcnow
from app.repositories import EventRepository, HistoryRepository, JobRepository
from app.settings import Settings
from app.sink import DatabaseSink
from core.telemetry import LayerRecord, NonFiniteEvent, StepRecord

NAN, INF = math.nan, math.inf


def add_job(factory: Any, status: str = "queued", total_steps: int = 100) -> str:
    job_id = str(uuid.uuid4())
    with unit_of_work(factory) as session:
        JobRepository(session).add(Job(
            id=job_id, status=status, name=None, spec={"data": {}}, spec_hash="x",
            executor="local", created_at=utcnow(), total_steps=total_steps, steps_completed=0,
            cancel_requested=False, event_seq=0))
    return job_id


def record(step: int, grad: float, layers: int = 2, loss: float = 1.0) -> StepRecord:
    return StepRecord(step=step, epoch=0, loss=loss, grad_norm=grad, clipped_grad_norm=grad,
                      lr=0.1, clipped=False, layers=[
                          LayerRecord(layer=i, grad_norm=grad, weight_grad_norm=grad,
                                      weight_norm=1.0, update_norm=0.01, act_mean=0.0,
                                      act_std=1.0, dead_fraction=None, saturated_fraction=None)
                          for i in range(layers)])


def test_sqlite_connections_have_wal_busy_timeout_and_foreign_keys(session_factory: Any) -> None:
    with session_factory() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30_000


def test_nan_and_infinities_round_trip_bit_for_bit_through_the_store(
        session_factory: Any) -> None:
    """Every value comes back with the bits it was written with (NaN, +-Inf, -0.0,
    subnormals, float32-exact and float64-only values), and a missing statistic stays None."""
    job_id = add_job(session_factory, status="running", total_steps=10)
    values = [NAN, INF, -INF, 0.0, -0.0, 1e308, 5e-324, 0.1, 0.5, 1.0 / 3.0]
    as_f32 = [float(np.float32(v)) if abs(v) < 1e38 else v for v in values]
    sink = DatabaseSink(job_id, session_factory, total_steps=10, flush_every=4,
                        flush_interval=60)
    for i, v in enumerate(values):
        rec = record(i, v)
        rec.layers[1].act_std = v  # a statistic that may be absent, here present
        rec.layers[0].weight_norm = as_f32[i]
        sink.write_steps([rec])
    sink.close()
    with unit_of_work(session_factory) as session:
        move_job(session, job_id, "succeeded")
        job = JobRepository(session).get(job_id)
        assert job is not None
        job.spec = {"data": {"source": "synthetic", "name": "spirals"},
                    "model": {"hidden": [{"units": 4}]}}
    with session_factory() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        stored = stored_history(session, job, Settings())
        # what the database holds: blobs, never a row per step
        chunks = session.execute(text("SELECT count(*), sum(n_steps) FROM history_chunks")).one()
        assert tuple(chunks) == (3, 10)  # one chunk per flush
    assert [r.step for r in stored.steps] == list(range(10))

    def bits(xs: list[Any]) -> list[int]:
        return np.array(xs, dtype=np.float64).view(np.uint64).tolist()

    assert bits([r.grad_norm for r in stored.steps]) == bits(values)
    assert bits([r.loss for r in stored.steps]) == bits([1.0] * 10)
    assert bits([r.layers[1].act_std for r in stored.steps]) == bits(values)
    assert bits([r.layers[0].weight_norm for r in stored.steps]) == bits(as_f32)
    assert all(r.layers[0].dead_fraction is None for r in stored.steps)  # None is not NaN


@pytest.mark.parametrize("framed", [True, False], ids=["GWH2", "GWH1"])
def test_a_chunk_decodes_to_what_was_encoded_whatever_the_mix_of_values(framed: bool) -> None:
    rng = np.random.default_rng(5)
    n, n_layers = 300, 3
    s = n_series(n_layers)
    values = rng.lognormal(size=(n, s))
    values[:, 5] = values[:, 5].astype(np.float32)  # a float32-exact series
    values[:, [6, 14, 22]] = values[:, [6, 14, 22]].astype(np.float32)  # in every layer
    values[rng.random((n, s)) < 0.01] = NAN
    values[10, 7], values[11, 7] = INF, -INF
    present = np.ones((n, s), dtype=bool)
    present[:, 10] = False  # a statistic that never applies
    present[::7, 11] = False  # and one that sometimes is missing
    cols = StepColumns(n_layers, np.arange(0, 3 * n, 3), np.arange(n) // 50,
                       rng.random(n) < 0.5, values, present)
    data = encode_chunk(cols, framed=framed)
    assert data[:4] == (b"GWH2" if framed else b"GWH1")
    got = decode_chunk(data)
    np.testing.assert_array_equal(got.steps, cols.steps)
    np.testing.assert_array_equal(got.epochs, cols.epochs)
    np.testing.assert_array_equal(got.clipped, cols.clipped)
    np.testing.assert_array_equal(got.present, present)
    want = np.where(present, values, NAN)
    assert got.values.view(np.uint64).tolist() == want.view(np.uint64).tolist()
    picked = decode_chunk(data, [11, 0, 5])
    assert picked.values.view(np.uint64).tolist() == want[:, [11, 0, 5]].view(np.uint64).tolist()
    np.testing.assert_array_equal(picked.present, present[:, [11, 0, 5]])
    # any selection, in any order, repeated, across frames, with series the run did not record
    layers_alike = [[20, 12, 14, 22, 13, 12], [14, 22], [27, 19, s + 1, 16]]  # layers 1 and 2
    for i in range(23):
        which = layers_alike[i] if i < 3 else rng.integers(0, s + 3, rng.integers(0, 12)).tolist()
        picked = decode_chunk(data, which)
        stored = [w for w in which if w < s]
        inside = [j for j, w in enumerate(which) if w < s]
        assert (picked.values[:, inside].view(np.uint64).tolist()
                == want[:, stored].view(np.uint64).tolist())
        np.testing.assert_array_equal(picked.present[:, inside], present[:, stored])
        outside = [j for j, w in enumerate(which) if w >= s]
        assert not picked.present[:, outside].any()
        assert np.isnan(picked.values[:, outside]).all()


def test_chunks_decode_correctly_from_many_threads_at_once() -> None:
    """The API decodes chunks in its thread pool: codec state must not be shared between
    threads (a shared zstd decompressor failed with 'Destination buffer is too small')."""
    rng = np.random.default_rng(9)
    n_layers = 4
    chunks = []
    for n in (4096, 37, 1500, 2048):
        cols = StepColumns(n_layers, np.arange(n), np.zeros(n, dtype=np.int64),
                           np.zeros(n, dtype=bool), rng.lognormal(size=(n, n_series(n_layers))),
                           np.ones((n, n_series(n_layers)), dtype=bool))
        chunks.append((encode_chunk(cols), cols.values.view(np.uint64)))
    errors: list[BaseException] = []

    def decode_all() -> None:
        try:
            for _ in range(25):
                for data, want in chunks:
                    got = decode_chunk(data).values.view(np.uint64)
                    assert np.array_equal(got, want)
        except BaseException as err:  # reported below, with the thread's failure
            errors.append(err)

    threads = [threading.Thread(target=decode_all) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_long_flush_is_stored_as_chunks_of_at_most_max_chunk_steps(
        session_factory: Any) -> None:
    """A page of history decodes whole chunks: however much one flush holds, a chunk holds
    at most MAX_CHUNK_STEPS steps."""
    n = 2 * MAX_CHUNK_STEPS + 10
    job_id = add_job(session_factory, total_steps=n)
    sink = DatabaseSink(job_id, session_factory, total_steps=n, flush_every=10**9,
                        flush_interval=3600)
    sink.write_steps([record(step, 1.0 + step % 5) for step in range(n)])
    sink.close()
    with session_factory() as session:
        repo = HistoryRepository(session)
        found = repo.key_of(job_id)
        assert found is not None
        assert [c[2] for c in repo.chunk_spans(found[0], 0, 10**9)] == [
            MAX_CHUNK_STEPS, MAX_CHUNK_STEPS, 10]
        steps = np.concatenate([decode_chunk(data).steps
                                for *_, data in repo.chunks(found[0], 0, 10**9)])
        assert steps.tolist() == list(range(n))


def test_the_sink_writes_one_chunk_per_flush_and_the_rollups_of_completed_blocks(
        session_factory: Any) -> None:
    job_id = add_job(session_factory, total_steps=1200)
    sink = DatabaseSink(job_id, session_factory, total_steps=1200, flush_every=300,
                        flush_interval=60)
    for step in range(1200):
        sink.write_steps([record(step, 1000.0 if step == 321 else 1.0 + step % 3)])
    sink.flush()
    with session_factory() as session:
        repo = HistoryRepository(session)
        found = repo.key_of(job_id)
        assert found is not None and found[1] == 2
        key = found[0]
        assert [c[:3] for c in repo.chunk_spans(key, 0, 10_000)] == [
            (0, 299, 300), (300, 599, 300), (600, 899, 300), (900, 1199, 300)]
        # blocks of 256 steps close once a later step is seen; larger ones are still open
        assert repo.rolled_until(key) == {8: 3, 9: 1, 10: 0}
        summary = decode_rollups(2, repo.rollups(key, [(8, 0, 3)]), [series_index(1, 0)])
        assert summary.count[:, 0].tolist() == [256, 256, 256, 256]
        assert summary.max_value[1, 0] == 1000.0 and summary.max_step[1, 0] == 321
        job = JobRepository(session).get(job_id)
        assert job is not None and job.steps_completed == 1200
    sink.close()
    with session_factory() as session:
        repo = HistoryRepository(session)
        assert repo.rolled_until(repo.key_of(job_id)[0])[16] == 0  # type: ignore[index]


def test_sink_reads_the_cancel_flag_on_every_flush(session_factory: Any) -> None:
    job_id = add_job(session_factory, status="running")
    sink = DatabaseSink(job_id, session_factory, total_steps=100, flush_every=5,
                        flush_interval=60)
    sink.write_steps([record(0, 1.0)])
    assert sink.should_stop() is None
    with unit_of_work(session_factory) as session:
        assert request_cancel(session, job_id) is not None
    for step in range(1, 5):
        sink.write_steps([record(step, 1.0)])  # the 5th record flushes
    assert sink.should_stop() == "cancelled"


def test_job_state_changes_follow_the_transition_table(session_factory: Any) -> None:
    job_id = add_job(session_factory)
    with unit_of_work(session_factory) as session:
        assert not move_job(session, job_id, "succeeded")  # queued -> succeeded is not allowed
        assert move_job(session, job_id, "running")  # the claim
        assert not move_job(session, job_id, "running")  # a job is claimed once
        assert move_job(session, job_id, "failed", error="x")
        assert not move_job(session, job_id, "cancelled")  # terminal stays terminal
    with session_factory() as session:  # each move appended one status event, one shape
        events = [e.data for e in EventRepository(session).of_type(job_id, "status")]
    assert [e["status"] for e in events] == ["running", "failed"]
    assert all(set(e) == set(events[0]) for e in events)
    assert events[-1]["terminal"] and events[-1]["error"] == "x"


def test_repeated_cancel_requests_append_one_event(session_factory: Any) -> None:
    job_id = add_job(session_factory, status="running")
    for _ in range(3):
        with unit_of_work(session_factory) as session:
            assert request_cancel(session, job_id) is not None
    with session_factory() as session:
        events = EventRepository(session).of_type(job_id, "status")
    assert [e.data["cancel_requested"] for e in events] == [True]


def test_event_ids_increase_per_job(session_factory: Any) -> None:
    a, b = add_job(session_factory), add_job(session_factory)
    with unit_of_work(session_factory) as session:
        events = EventRepository(session)
        ids = [events.append(a, "status", {}), events.append(b, "status", {}),
               events.append(a, "progress", {"x": NAN})]
    assert ids == [1, 1, 2]
    with session_factory() as session:
        assert [e.seq for e in EventRepository(session).since(a, 1)] == [2]


def test_deleting_a_job_cascades_to_its_history(session_factory: Any) -> None:
    job_id = add_job(session_factory, status="running")
    sink = DatabaseSink(job_id, session_factory, total_steps=50, flush_every=10)
    sink.write_steps([record(s, 1.0) for s in range(50)])
    sink.close()
    with unit_of_work(session_factory) as session:
        move_job(session, job_id, "succeeded")
        assert JobRepository(session).delete(job_id, statuses=TERMINAL)
    with session_factory() as session:
        for table in ("history_keys", "history_chunks", "history_rollups", "job_events"):
            count = session.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            assert count == 0, table


# ---- downsampling rules (pure) ----


def summary_of(values: np.ndarray) -> Summary:
    steps = np.arange(len(values))
    return Summary.from_points(steps, values[:, None], np.ones((len(values), 1), bool))


def test_plan_never_exceeds_max_points() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        start = int(rng.integers(0, 10_000))
        end = start + int(rng.integers(1, 2_000_000))
        max_points = int(rng.integers(10, 5000))
        plan = plan_buckets(start, end, max_points)
        buckets = end // plan.bucket_size - start // plan.bucket_size + 1
        assert 2 * buckets + 2 <= max_points
        if plan.level is not None:
            assert plan.bucket_size % (1 << plan.level) == 0


def test_downsampling_keeps_spikes_non_finite_points_and_the_ends() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(100_000)
    values[12_345] = 1e6  # a one-step spike
    values[50_000] = NAN
    values[70_000] = -INF
    values[90_001] = INF
    units = summary_of(values)
    plan = plan_buckets(0, 99_999, 200)
    edges = [(np.array([0, 99_999]), values[[0, 99_999]])]
    (steps, got), = downsample_points(units, plan.bucket_size, edges)
    assert len(steps) <= 200
    assert list(steps) == sorted(set(steps.tolist()))
    point = dict(zip(steps.tolist(), got.tolist(), strict=True))
    assert point[12_345] == 1e6
    assert math.isnan(point[50_000])
    assert point[70_000] == -INF and point[90_001] == INF
    assert 0 in point and 99_999 in point


def test_rollups_compose_to_the_same_buckets_as_raw_points() -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    values = rng.standard_normal((n, 3))
    values[777, 1] = NAN
    values[5_000:5_003, 2] = INF
    present = np.ones_like(values, dtype=bool)
    present[:, 0] = rng.random(n) > 0.1  # gaps
    builder = RollupBuilder(3)
    blocks: dict[int, list[Summary]] = {}
    for i in range(0, n, 997):
        for rb in builder.add(np.arange(i, min(n, i + 997)), values[i:i + 997],
                              present[i:i + 997]):
            blocks.setdefault(rb.level, []).append(rb.summary)
    for rb in builder.finish():
        blocks.setdefault(rb.level, []).append(rb.summary)
    points = Summary.from_points(np.arange(n), values, present)
    for level, parts in blocks.items():
        rolled = Summary.concat(parts)
        size = 1 << (level + 2)
        a = reduce_segments(rolled, group_starts(rolled.start // size))
        b = reduce_segments(points, group_starts(points.start // size))
        for field in ("count", "min_step", "max_step", "nf_step"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize("bucket", [[1.0, NAN, 3.0], [NAN, NAN], [2.0, NAN, -INF, INF]])
def test_a_nan_bucket_still_shows_its_nan(bucket: list[float]) -> None:
    values = np.array(bucket)
    (steps, got), = downsample_points(summary_of(values), 1000,
                                      [(np.empty(0, np.int64), np.empty(0))])
    assert any(math.isnan(v) for v in got)
    assert len(steps) <= 3


def test_settings_default_to_a_sqlite_file_in_the_data_dir(tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.url == f"sqlite:///{(tmp_path / 'gradwatch.db').resolve()}"


@pytest.mark.parametrize("finished", [True, False])
def test_history_from_rollups_matches_brute_force_downsampling(
        session_factory: Any, finished: bool) -> None:
    """Blocks + raw edges (and a running job's un-rolled tail) give exactly the points that
    downsampling the raw rows directly gives."""
    from app.services import HistoryQuery, gradient_history, metrics_history

    rng = np.random.default_rng(3)
    n = 20_000
    steps = np.sort(rng.choice(60_000, size=n, replace=False))  # gaps, as with record_every
    grads = rng.lognormal(size=n)
    grads[[100, 7_000]] = [NAN, INF]
    grads[12_345] = 1e12
    job_id = add_job(session_factory, status="running", total_steps=60_000)
    with unit_of_work(session_factory) as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        job.spec = {"model": {"hidden": [{}]}}
    sink = DatabaseSink(job_id, session_factory, total_steps=60_000, flush_every=777,
                        flush_interval=3600)
    for s, g in zip(steps.tolist(), grads.tolist(), strict=True):
        sink.write_steps([record(s, g, layers=2, loss=g)])
    if finished:
        sink.close()
        with unit_of_work(session_factory) as session:
            move_job(session, job_id, "succeeded")
    else:
        sink.flush()
    for start, end, max_points in [(None, None, 1000), (1234, 51_234, 300), (5, 40_000, 64)]:
        q = HistoryQuery(start, end, max_points)
        with session_factory() as session:
            got = gradient_history(session, job_id, q, layer=None, metrics=["grad_norm"])
            metrics = metrics_history(session, job_id, q, metrics=["loss"])
        lo, hi = start or 0, end if end is not None else 10**9
        mask = (steps >= lo) & (steps <= hi)
        assert got["points_in_range"] == metrics["points_in_range"] == int(mask.sum())
        assert got["downsampled"]
        units = Summary.from_points(steps[mask], grads[mask][:, None], np.ones((mask.sum(), 1), bool))
        edges = [(steps[mask][[0, -1]], grads[mask][[0, -1]])]
        (want_steps, want_values), = downsample_points(units, got["bucket_size"], edges)
        for series in (got["layers"][1]["series"]["grad_norm"], metrics["series"]["loss"]):
            assert series["steps"] == want_steps.tolist()
            np.testing.assert_array_equal(np.array(series["values"], dtype=float), want_values)
            assert len(series["steps"]) <= max_points


def test_a_job_that_cannot_train_fails_with_a_readable_error(migrated_url: str) -> None:
    from app.worker import run_job
    from app.worker_process import configure_worker

    context = configure_worker(Settings(database_url=migrated_url, workers=0))
    job_id = add_job(context.factory)  # its stored spec ({"data": {}}) is not a valid spec
    assert run_job(job_id, context=context) == "failed"
    assert run_job(job_id, context=context) == "skipped"  # a job runs once
    with context.factory() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error.startswith("training failed: ValidationError")
        assert len(job.error) < 1000
        events = EventRepository(session).since(job_id, 0)
        assert [e.data["status"] for e in events] == ["running", "failed"]
        assert events[-1].data["terminal"] is True


def test_a_stored_history_carries_the_monitors_alerts_into_the_diagnosis(migrated_url: str) -> None:
    """record_every thins the stored steps; the online monitor saw every one. An explosion
    confirmed between two recorded steps must still be diagnosed from the database."""
    import copy
    import dataclasses

    from app.history import stored_history
    from app.routers.examples import EXPLODING_SPEC
    from app.services import diagnostics, submit_job, validate_spec
    from app.worker_process import configure_worker
    from core import Trainer
    from core.diagnostics import diagnose

    settings = Settings(database_url=migrated_url, workers=0)
    context = configure_worker(settings)
    body = copy.deepcopy(EXPLODING_SPEC)
    body["optimizer"]["lr"] = 0.2
    body["training"]["epochs"] = 3
    body["monitor"] = {"record_every": 10, "stop_on_explosion": True}
    spec = validate_spec(body, settings)
    with unit_of_work(context.factory) as session:
        job_id = submit_job(session, spec=spec, settings=settings).job.id
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, context.factory, total_steps=spec.total_steps())
    result = Trainer(spec).run(sink)
    sink.close()
    assert result.stop_reason == "explosion" and result.alerts
    with unit_of_work(context.factory) as session:  # finished, but no report stored
        move_job(session, job_id, "succeeded", stop_reason="explosion")

    with context.factory() as session:
        stored = stored_history(session, JobRepository(session).get(job_id), settings)
        assert [a["kind"] for a in stored.alerts] == [a.kind for a in result.alerts]
        assert len(stored.steps) < result.steps_completed  # thinned by record_every
        report = diagnostics(session, job_id, settings)
    assert report["verdict"] == diagnose(result).verdict == "exploding"
    assert report["final"] is True
    # without the alerts, the thinned records alone would not show the explosion
    assert diagnose(dataclasses.replace(stored, alerts=[])).verdict != "exploding"


def test_a_long_history_is_read_thinned_for_a_diagnosis_but_keeps_its_telling_steps(
        migrated_url: str) -> None:
    """A provisional diagnosis of a very long run must not load every row into the API."""
    from app.history import stored_history
    from app.services import submit_job, validate_spec
    from app.worker_process import configure_worker

    settings = Settings(database_url=migrated_url, workers=0, diagnosis_max_records=100)
    context = configure_worker(settings)
    spec = validate_spec({"data": {"source": "synthetic", "name": "spirals"},
                          "model": {"hidden": [{"units": 4}]}}, settings)
    with unit_of_work(context.factory) as session:
        job_id = submit_job(session, spec=spec, settings=settings).job.id
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, context.factory, total_steps=1000, flush_every=250)
    for step in range(1000):
        if step == 555:  # what the trainer tells its sink when it finds the first NaN
            sink.write_non_finite(NonFiniteEvent(555, 0, "gradient", "nan"))
        sink.write_steps([record(step, NAN if step == 555 else 1.0)])
    sink.close()
    with context.factory() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None and job.first_non_finite is not None
        stored = stored_history(session, job, settings)
    steps = [r.step for r in stored.steps]
    assert 100 <= len(steps) <= 110 and steps == sorted(steps)
    assert {0, 555, 999} <= set(steps)
    assert all(len(r.layers) == 2 for r in stored.steps)
