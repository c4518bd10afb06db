"""The columnar history store (issue 14): ingest, bytes per layer-step, read latency.

    .venv/bin/python bench/history_store.py [--database sqlite|postgres] [--quick]

Per database, with telemetry shaped like a real run (10 layers; noisy float64 norms and
activation statistics, a slowly moving weight norm, a constant lr, a statistic that does not
apply; 6 planted spikes and 20 NaN/Inf per 100k steps):

- ingest: layer-steps/s through the workers' ``DatabaseSink`` (blocks of 500 steps as the
  trainer hands them over, one flush each, rollups included, data generation excluded), median of ``--repeats`` 100k-step jobs;
- storage: bytes per layer-step of one 1M-step job (SQLite: file growth after a checkpoint;
  PostgreSQL: ``pg_total_relation_size`` of the history tables, TOAST and indexes included);
- reads through the HTTP API (in-process client, JSON bodies): all 10 layers downsampled to
  1000 points, and one layer's 100k points (grad_norm), on a 100k-step job; medians.

The row store this replaced is not runnable any more; its figures, measured by
bench/service_bench.py on the same machine, are quoted from bench/README.md for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

from app.db import build_engine, build_sessionmaker, unit_of_work  # noqa: E402
from app.history import HistoryQuery, gradient_page  # noqa: E402
from app.history_formats import arrow_stream, json_pieces  # noqa: E402
from app.lifecycle import move_job  # noqa: E402
from app.main import create_app  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import Job  # noqa: E402
from app.services import submit_job, validate_spec  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.sink import DatabaseSink  # noqa: E402
from bench.service_procs import postgres_database  # noqa: E402
from core.telemetry import StepBlock  # noqa: E402

N_LAYERS = 10
FLUSH = 500
# the former row store, bench/README.md (issue 14's table): SQLite / PostgreSQL
CPU_SECONDS: dict[str, float] = {}  # per job: the ingest's CPU time in this process
ROW_STORE = {"sqlite": {"ingest": 114_000, "bytes": "181-205", "down_ms": 15, "full_ms": 202},
             "postgres": {"ingest": 94_000, "bytes": "347-377", "down_ms": 30, "full_ms": 296}}


def batches(n_steps: int, seed: int) -> Iterator[StepBlock]:
    """Blocks of FLUSH emitted steps of a plausible run, as the trainer hands them to the sink
    (rows of STEP_FIELDS then each layer's LAYER_FIELDS; built lazily: 1M steps are 84M
    values)."""
    rng = np.random.default_rng(seed)
    spikes = rng.choice(n_steps, max(1, 6 * n_steps // 100_000), replace=False)
    bad = rng.choice(n_steps, max(2, 20 * n_steps // 100_000), replace=False)
    nan_at, inf_at = bad[: len(bad) // 2], bad[len(bad) // 2:]
    level = np.zeros(N_LAYERS)
    weight = np.full(N_LAYERS, 3.0)
    present = np.ones((N_LAYERS, 8), dtype=bool)
    present[:, 7] = False  # saturated_fraction does not apply to ReLU layers
    present_row = np.concatenate([np.ones(4, dtype=bool), present.reshape(-1)])
    for start in range(0, n_steps, FLUSH):
        n = min(FLUSH, n_steps - start)
        steps = np.arange(start, start + n)
        level_walk = level + np.cumsum(rng.normal(0, 0.01, (n, N_LAYERS)), axis=0)
        level = level_walk[-1]
        grads = np.exp(level_walk + rng.normal(0, 0.3, (n, N_LAYERS)))
        grads[np.isin(steps, spikes)] *= 1e4
        rows = steps - start
        for marks, value in ((nan_at, np.nan), (inf_at, np.inf)):
            hit = rows[np.isin(steps, marks)]
            grads[hit, steps[hit] % N_LAYERS] = value
        weights = weight + np.cumsum(rng.normal(0, 1e-4, (n, N_LAYERS)), axis=0)
        weight = weights[-1]
        acts = rng.normal(0.2, 0.02, (n, N_LAYERS, 2))
        dead = rng.integers(0, 64, (n, N_LAYERS)) / 64
        with np.errstate(invalid="ignore", over="ignore"):
            total = np.sqrt(np.sum(np.where(np.isfinite(grads), grads, 0.0) ** 2, axis=1))
        layers = np.stack([grads, 0.9 * grads, weights, 1e-3 * grads, acts[..., 0],
                           acts[..., 1], dead, np.full_like(dead, np.nan)], axis=2)
        values = np.concatenate([np.stack([1.0 / (1 + steps) + 0.01 * grads[:, 0], total,
                                           total, np.full(n, 0.01)], axis=1),
                                 layers.reshape(n, -1)], axis=1)
        yield StepBlock(N_LAYERS, steps, steps // 1000, np.zeros(n, dtype=bool), values,
                        np.broadcast_to(present_row, values.shape))


def ingest(settings: Settings, n_steps: int, seed: int) -> tuple[str, float]:
    """A succeeded job of ``n_steps``; the seconds spent in the sink."""
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    spec = validate_spec({"data": {"source": "synthetic", "name": "spirals"},
                          "model": {"hidden": [{"units": 8}] * (N_LAYERS - 1)},
                          "training": {"max_steps": n_steps, "epochs": 10**6}}, settings)
    with unit_of_work(factory) as session:
        job_id = submit_job(session, spec=spec, settings=settings).job.id
        move_job(session, job_id, "running")
    sink = DatabaseSink(job_id, factory, total_steps=n_steps, flush_every=FLUSH,
                        flush_interval=3600, progress_interval=1.0)
    seconds = cpu = 0.0
    for batch in batches(n_steps, seed):
        t0, c0 = time.perf_counter(), time.process_time()
        sink.write_block(batch)
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    sink.close()
    seconds += time.perf_counter() - t0
    cpu += time.process_time() - c0
    CPU_SECONDS[job_id] = cpu
    with unit_of_work(factory) as session:
        move_job(session, job_id, "succeeded", stop_reason="completed")
    engine.dispose()
    return job_id, seconds


def stored_bytes(settings: Settings) -> int:
    engine = build_engine(settings.url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                return int(conn.execute(text(
                    "SELECT sum(pg_total_relation_size(t)) FROM unnest(ARRAY["
                    "'history_keys', 'history_chunks', 'history_rollups']::regclass[]) t"
                )).scalar() or 0)
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            path = Path(engine.url.database or "")
            return path.stat().st_size
    finally:
        engine.dispose()


def median_ms(client: TestClient, url: str, params: dict[str, Any], repeats: int
              ) -> tuple[float, float, int]:
    """Median wall and CPU milliseconds of a request (the in-process app included)."""
    times, cpu, size = [], [], 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        response = client.get(url, params=params)
        times.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
        assert response.status_code == 200, response.text
        size = len(response.content)
    return statistics.median(times), statistics.median(cpu), size


def in_process_split(settings: Settings, job_id: str, n_points: int, repeats: int = 7
                     ) -> tuple[float, float, float]:
    """Medians (ms) of one full layer's read without HTTP: the store's part (the page's
    columns), encoding them as JSON, and as Arrow."""
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    store, as_json, as_arrow = [], [], []
    try:
        for _ in range(repeats):
            with unit_of_work(factory) as session:
                job = session.get(Job, job_id)
                t0 = time.perf_counter()
                page = gradient_page(session, job, HistoryQuery(None, None, n_points), layer=0,
                                     metrics=["grad_norm"])
                t1 = time.perf_counter()
                sum(map(len, json_pieces(page)))
                t2 = time.perf_counter()
                sum(map(len, arrow_stream(page)))
                t3 = time.perf_counter()
            store.append(1000 * (t1 - t0))
            as_json.append(1000 * (t2 - t1))
            as_arrow.append(1000 * (t3 - t2))
    finally:
        engine.dispose()
    return statistics.median(store), statistics.median(as_json), statistics.median(as_arrow)


def run(settings: Settings, database: str, quick: bool, repeats: int) -> dict[str, Any]:
    upgrade(settings.url)
    figures: dict[str, Any] = {"database": database}
    ingest_steps = 20_000 if quick else 100_000
    rates, cpu_rates, job_id = [], [], ""
    for r in range(repeats):
        job_id, seconds = ingest(settings, ingest_steps, seed=r)
        rates.append(ingest_steps * N_LAYERS / seconds)
        cpu_rates.append(ingest_steps * N_LAYERS / CPU_SECONDS[job_id])
    figures["ingest_layer_steps_per_s"] = statistics.median(rates)
    figures["ingest_runs"] = [round(x) for x in rates]
    figures["ingest_layer_steps_per_cpu_s"] = statistics.median(cpu_rates)
    with TestClient(create_app(settings)) as client:
        base = f"/v1/jobs/{job_id}/gradients"
        client.get(base)  # warm up
        (figures["read_all_layers_1000_ms"], figures["read_all_layers_1000_cpu_ms"],
         figures["read_all_layers_1000_bytes"]) = median_ms(client, base, {"max_points": 1000}, 15)
        one_metric = {"max_points": 1000, "metrics": "grad_norm"}
        (figures["read_all_layers_1000_grad_ms"], figures["read_all_layers_1000_grad_cpu_ms"],
         figures["read_all_layers_1000_grad_bytes"]) = median_ms(client, base, one_metric, 15)
        full = {"layer": 0, "metrics": "grad_norm", "max_points": ingest_steps}
        (figures["read_one_layer_full_ms"], figures["read_one_layer_full_cpu_ms"],
         figures["read_one_layer_full_bytes"]) = median_ms(client, base, full, 7)
        full_arrow = {**full, "format": "arrow"}
        (figures["read_one_layer_full_arrow_ms"], figures["read_one_layer_full_arrow_cpu_ms"],
         figures["read_one_layer_full_arrow_bytes"]) = median_ms(client, base, full_arrow, 7)
        (figures["read_one_layer_full_store_ms"], figures["read_one_layer_full_json_ms"],
         figures["read_one_layer_full_arrow_encode_ms"]) = in_process_split(settings, job_id,
                                                                            ingest_steps)
        full_all = {"layer": 0, "max_points": ingest_steps}
        figures["read_one_layer_full_all_metrics_ms"], _, _ = median_ms(client, base, full_all, 3)
    before = stored_bytes(settings)
    big = 100_000 if quick else 1_000_000
    _, seconds = ingest(settings, big, seed=99)
    figures["big_job_steps"] = big
    figures["big_job_ingest_layer_steps_per_s"] = big * N_LAYERS / seconds
    figures["bytes_per_layer_step"] = (stored_bytes(settings) - before) / (big * N_LAYERS)
    figures["load"] = os.getloadavg()[1]
    return figures


def report(f: dict[str, Any]) -> None:
    db = f["database"]
    old = ROW_STORE[db]
    print(f"history store on {db} (load average {f['load']:.1f} during the run on "
          f"{os.cpu_count()} cores; CPU figures count this process only)")
    print(f"  ingest through the sink: {f['ingest_layer_steps_per_s']:,.0f} layer-steps/s "
          f"(median of {len(f['ingest_runs'])}: {f['ingest_runs']}; per CPU second of this "
          f"process {f['ingest_layer_steps_per_cpu_s']:,.0f}); row store ~{old['ingest']:,}"
          f" -> x{f['ingest_layer_steps_per_s'] / old['ingest']:.1f}; target "
          f"{'1M' if db == 'sqlite' else '500k'}")
    print(f"  storage ratio to the row store's lower figure: "
          f"x{float(old['bytes'].split('-')[0]) / f['bytes_per_layer_step']:.1f} smaller")
    print(f"  storage: {f['bytes_per_layer_step']:.1f} B per layer-step on a "
          f"{f['big_job_steps']:,}-step {N_LAYERS}-layer job (its ingest "
          f"{f['big_job_ingest_layer_steps_per_s']:,.0f} layer-steps/s); row store "
          f"{old['bytes']} B; target <= 40 B")
    print(f"  all {N_LAYERS} layers downsampled to 1000 points, grad_norm ({N_LAYERS} series): "
          f"{f['read_all_layers_1000_grad_ms']:.1f} ms, CPU "
          f"{f['read_all_layers_1000_grad_cpu_ms']:.1f} ms "
          f"({f['read_all_layers_1000_grad_bytes']:,} B JSON); row store {old['down_ms']} ms "
          f"-> x{old['down_ms'] / f['read_all_layers_1000_grad_ms']:.1f}; target < 20 ms")
    print(f"  all {N_LAYERS} layers downsampled to 1000 points, all 8 metrics "
          f"({8 * N_LAYERS} series): {f['read_all_layers_1000_ms']:.1f} ms, CPU "
          f"{f['read_all_layers_1000_cpu_ms']:.1f} ms "
          f"({f['read_all_layers_1000_bytes']:,} B JSON)")
    print(f"  one layer, all points (grad_norm): {f['read_one_layer_full_ms']:.1f} ms, CPU "
          f"{f['read_one_layer_full_cpu_ms']:.1f} ms "
          f"({f['read_one_layer_full_bytes']:,} B JSON); row store {old['full_ms']} ms "
          f"-> x{old['full_ms'] / f['read_one_layer_full_ms']:.1f}; target < 50 ms; all 8 metrics "
          f"{f['read_one_layer_full_all_metrics_ms']:.0f} ms")
    print(f"    without HTTP: the store {f['read_one_layer_full_store_ms']:.1f} ms + JSON "
          f"{f['read_one_layer_full_json_ms']:.1f} ms = "
          f"{f['read_one_layer_full_store_ms'] + f['read_one_layer_full_json_ms']:.1f} ms "
          f"(Arrow encoding {f['read_one_layer_full_arrow_encode_ms']:.1f} ms)")
    print(f"  one layer, all points (grad_norm) as Arrow: {f['read_one_layer_full_arrow_ms']:.1f} "
          f"ms, CPU {f['read_one_layer_full_arrow_cpu_ms']:.1f} ms "
          f"({f['read_one_layer_full_arrow_bytes']:,} B); target < 10 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "GRADWATCH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = (stack.enter_context(postgres_database(args.postgres_url))
               if args.database == "postgres" else None)
        settings = Settings(data_dir=tmp, workers=0, database_url=url,
                            max_history_points=1_000_000, migrate_on_start=False)
        figures = run(settings, args.database, args.quick, args.repeats)
    print(json.dumps(figures, indent=2))
    report(figures)


if __name__ == "__main__":
    main()
