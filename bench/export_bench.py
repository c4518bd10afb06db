"""History export and predictions (issue 12): CSV throughput, memory, predict latency.

    .venv/bin/python bench/export_bench.py [--steps 100000] [--repeats 3]

- export: a ``--steps``-step, 10-layer job ingested through the workers' sink (SQLite), then
  ``metrics.csv`` and ``gradients.csv`` (one row per step and layer), and the same as
  ``.parquet``, downloaded through the HTTP API (in-process client, streamed): median
  seconds, rows/s, MB; and the peak of Python allocations while the export's generator makes
  the whole file (tracemalloc, a separate run: it slows the code), plus for Parquet the peak
  of Arrow's memory pool, neither of which may grow with the job (a window of chunks at a
  time);
- predict: a 2-64-64-3 classifier kept as a job's model; ``POST /predict`` with 1, 100 and
  10,000 rows (median ms, the file is read per request) and ``core.load_model(...).predict``
  on the same rows offline.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

import core  # noqa: E402
from app.artifacts import store_model  # noqa: E402
from app.blobstore import blob_store  # noqa: E402
from app.db import build_engine, build_sessionmaker, unit_of_work  # noqa: E402
from app.exports import Table, csv_rows, parquet_file  # noqa: E402
from app.lifecycle import move_job  # noqa: E402
from app.main import create_app  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.services import submit_job, validate_spec  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.history_store import N_LAYERS, ingest  # noqa: E402

CLASSIFIER = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 600,
                       "standardize": True},
              "model": {"hidden": [{"units": 64}, {"units": 64}]},
              "optimizer": {"name": "adam", "lr": 0.01}, "training": {"epochs": 5}}


def download(client: TestClient, url: str) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (this process: client and server), bytes and lines of a
    streamed download."""
    t0, c0 = time.perf_counter(), time.process_time()
    size = lines = 0
    with client.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        for block in response.iter_bytes():
            size += len(block)
            lines += block.count(b"\n")
    return time.perf_counter() - t0, time.process_time() - c0, size, lines


def peak_alloc(factory: Any, job_id: str, table: Table, fmt: str = "csv") -> int:
    """Peak Python allocations while the export's generator makes the whole file."""
    make = parquet_file if fmt == "parquet" else csv_rows
    tracemalloc.start()
    try:
        for _ in make(factory, job_id, table):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def arrow_peak(factory: Any, job_id: str, table: Table) -> int:
    """Peak of Arrow's memory pool while the Parquet export is made (a fresh pool)."""
    import pyarrow as pa

    pool = pa.system_memory_pool()
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        start = pool.max_memory() or 0
        for _ in parquet_file(factory, job_id, table):
            pass
        return int(pool.max_memory() or 0) - int(start)
    finally:
        pa.set_memory_pool(previous)


def model_job(settings: Settings) -> str:
    """A succeeded job whose model is a trained 2-64-64-3 classifier."""
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    spec = validate_spec(CLASSIFIER, settings)
    with unit_of_work(factory) as session:
        job_id = submit_job(session, spec=spec, settings=settings).job.id
        move_job(session, job_id, "running")
        move_job(session, job_id, "succeeded", stop_reason="completed")
    engine.dispose()
    trainer = core.Trainer(core.TrainingSpec.model_validate(spec.model_dump()))
    trainer.run()
    store_model(blob_store(settings), job_id, core.Model.from_trainer(trainer))
    return job_id


def median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), workers=0, migrate_on_start=False)
        upgrade(settings.url)
        job_id, _ = ingest(settings, args.steps, seed=0)
        model_id = model_job(settings)
        with TestClient(create_app(settings)) as client:
            print(f"export of a {args.steps:,}-step {N_LAYERS}-layer job (SQLite, in-process "
                  f"client; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            tables: tuple[Table, ...] = ("metrics", "gradients")
            factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
            for table in tables:
                url = f"/v1/jobs/{job_id}/{table}.csv"
                runs = [download(client, url) for _ in range(args.repeats)]
                seconds = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                size, lines = runs[0][2], runs[0][3]
                peak = peak_alloc(factory, job_id, table)
                print(f"  {table}.csv: {lines - 1:,} rows, {size / 1e6:.1f} MB in "
                      f"{seconds:.2f} s (median of {args.repeats}) = "
                      f"{(lines - 1) / seconds:,.0f} rows/s, {(lines - 1) / cpu:,.0f} rows per CPU s;"
                      f" peak Python allocations while making it {peak / 1e6:.1f} MB")
                rows = lines - 1
                runs = [download(client, f"/v1/jobs/{job_id}/{table}.parquet")
                        for _ in range(args.repeats)]
                seconds = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                print(f"  {table}.parquet: {runs[0][2] / 1e6:.1f} MB in {seconds:.2f} s = "
                      f"{rows / seconds:,.0f} rows/s, {rows / cpu:,.0f} rows per CPU s; peak "
                      f"Python allocations {peak_alloc(factory, job_id, table, 'parquet') / 1e6:.1f}"
                      f" MB, Arrow pool {arrow_peak(factory, job_id, table) / 1e6:.1f} MB")
            X = np.random.default_rng(0).normal(size=(10_000, 2))
            with client.stream("GET", f"/v1/jobs/{model_id}/model") as response:
                model = core.load_model(io.BytesIO(response.read()))
            print(f"predict with a 2-64-64-3 classifier (load average "
                  f"{os.getloadavg()[0]:.1f}); API reads the model file per request")
            for n in (1, 100, 10_000):
                body = {"X": X[:n].tolist()}
                api = median_ms(lambda body=body: client.post(
                    f"/v1/jobs/{model_id}/predict", json=body), 9)
                offline = median_ms(lambda n=n: model.predict(X[:n]), 9)
                print(f"  {n:>6,} rows: POST /predict {api:.1f} ms; core predict offline "
                      f"{offline:.2f} ms")
            load = median_ms(lambda: core.load_model(
                Path(settings.blob_dir or "") / "models" / model_id / "final.npz"), 9)
            print(f"  core.load_model of the file: {load:.1f} ms")


if __name__ == "__main__":
    main()
