"""Service benchmarks (not tests). Prints the figures; see bench/README.md.

    python bench/service_bench.py [--quick]                          # SQLite, local workers
    python bench/service_bench.py --database postgres --executor celery [--quick]

(i)   one job through the API (submit -> terminal, real worker process) vs the same spec
      through core.Trainer directly: overhead in %            (target <= 15 %)
(ii)  ingest rate of norm records (rows/s), through the worker's sink; on PostgreSQL also
      the plain executemany path for comparison with the COPY fast path
(iii) GET /v1/jobs/{id}/gradients?max_points=1000 on a job with 1,000,000 stored
      layer-steps: median latency                             (target < 100 ms)
(iv)  requests/s for GET /v1/jobs/{id}
(v)   celery only: throughput of N small jobs with 1 and with 2 workers (`gradwatch worker
      --concurrency 1` each), and the scaling factor

--database postgres creates a throw-away database on --postgres-url's server (dropped at the
end); --executor celery uses Redis at --broker-url under a key prefix of its own (deleted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db import build_engine, build_sessionmaker, unit_of_work  # noqa: E402
from app.lifecycle import move_job  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.services import submit_job, validate_spec  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.sink import DatabaseSink  # noqa: E402
from bench.service_procs import Server, Workers, broker_prefix, postgres_database  # noqa: E402
from core.telemetry import LayerRecord, StepRecord  # noqa: E402

# (i) is measured on two sizes: the per-step cost of recording is fixed (a few rows and
# rollup updates per step), so its share shrinks as steps get more expensive.
OVERHEAD_SPEC: dict[str, Any] = {
    "name": "bench-overhead",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 2000},
    "model": {"hidden": [{"units": 128}, {"units": 128}, {"units": 128}]},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 30, "batch_size": 32},
    "monitor": {"stop_on_explosion": False},
}
OVERHEAD_SPEC_WIDE: dict[str, Any] = {
    **OVERHEAD_SPEC,
    "name": "bench-overhead-wide",
    "model": {"hidden": [{"units": 512}, {"units": 512}, {"units": 512}]},
    "training": {"epochs": 30, "batch_size": 128},
}


_DIRECT = """
import json, sys, time
from app.worker_process import tune_malloc
tune_malloc()  # as the workers do, so that only the service's own costs differ
from threadpoolctl import threadpool_limits
from core import Trainer, TrainingSpec
spec = TrainingSpec.model_validate(json.loads(sys.argv[1]))
with threadpool_limits(limits=int(sys.argv[2])):
    Trainer(spec).run()  # warm up caches and imports like the worker's first job did
    t0 = time.perf_counter()
    Trainer(spec).run()
    print(time.perf_counter() - t0)
"""


def direct_seconds(spec: dict[str, Any], blas_threads: int) -> float:
    """core.Trainer on the spec in a fresh process with the worker's BLAS thread cap."""
    caps = {var: str(blas_threads) for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                "MKL_NUM_THREADS")}  # as the workers set them
    out = subprocess.run([sys.executable, "-c", _DIRECT, json.dumps(spec), str(blas_threads)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **caps},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_overhead(server: Server, repeats: int, body: dict[str, Any]) -> dict[str, float]:
    from core import TrainingSpec

    spec = TrainingSpec.model_validate(body)
    server.run_job({**body, "training": {"epochs": 1, "batch_size": 32}})  # warm up
    threads = Settings().blas_threads_per_worker()  # what each default worker gets
    direct, api = [], []
    for _ in range(repeats):  # alternate, never concurrently: they would share the cores
        direct.append(direct_seconds(body, threads))
        seconds, job = server.run_job(body)
        assert job["status"] == "succeeded", job
        api.append(seconds)
    d, a = statistics.median(direct), statistics.median(api)
    return {"steps": spec.total_steps(), "direct_s": d, "api_s": a,
            "overhead_pct": 100 * (a / d - 1),
            "overhead_pct_best_of": 100 * (min(api) / min(direct) - 1)}


def _record(step: int, n_layers: int) -> StepRecord:
    g = 1.0 + (step % 97) * 0.01
    return StepRecord(step=step, epoch=step // 1000, loss=1.0 / (1 + step), grad_norm=g,
                      clipped_grad_norm=g, lr=0.01, clipped=False, layers=[
                          LayerRecord(layer=i, grad_norm=g, weight_grad_norm=g, weight_norm=3.0,
                                      update_norm=0.01, act_mean=0.1, act_std=1.0,
                                      dead_fraction=0.05, saturated_fraction=None)
                          for i in range(n_layers)])


def seed_job(settings: Settings, steps: int, n_layers: int, flush_every: int = 500
             ) -> tuple[str, float, int]:
    """A succeeded job with `steps` x `n_layers` stored layer-steps; returns id, seconds and
    the steps + layer-steps stored (the "rows" of the former row store)."""
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    with unit_of_work(factory) as session:
        spec = validate_spec({"data": {"source": "synthetic", "name": "spirals"},
                              "training": {"max_steps": steps, "epochs": 100_000}}, settings)
        job_id = submit_job(session, spec=spec, settings=settings).job.id
        move_job(session, job_id, "running")
    records = [_record(s, n_layers) for s in range(steps)]
    sink = DatabaseSink(job_id, factory, total_steps=steps, flush_every=flush_every,
                        flush_interval=3600, progress_interval=3600)
    t0 = time.perf_counter()
    for i in range(0, steps, flush_every):
        sink.write_steps(records[i:i + flush_every])
    sink.close()
    seconds = time.perf_counter() - t0
    with unit_of_work(factory) as session:
        move_job(session, job_id, "succeeded", stop_reason="completed")
    engine.dispose()
    return job_id, seconds, sink.rows_written


def bench_query(server: Server, job_id: str, repeats: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, params in [("all_layers_all_metrics", {}),
                          ("all_layers_grad_norm", {"metrics": "grad_norm"}),
                          ("one_layer_all_metrics", {"layer": 0})]:
        params = {**params, "max_points": 1000}
        server.http.get(f"/v1/jobs/{job_id}/gradients", params=params)  # warm caches
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = server.http.get(f"/v1/jobs/{job_id}/gradients", params=params)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json()["downsampled"]
        out[label + "_ms"] = 1000 * statistics.median(times)
    return out


def bench_rps(server: Server, job_id: str, seconds: float, threads: int) -> float:
    count = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def hammer() -> None:
        nonlocal count
        with httpx.Client(base_url=server.url, timeout=30) as client:
            n = 0
            while time.perf_counter() < stop:
                assert client.get(f"/v1/jobs/{job_id}").status_code == 200
                n += 1
        with lock:
            count += n

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return count / (time.perf_counter() - t0)


# (v): small jobs, a fraction of a second of training each, so that the per-job path
# (publish, claim, flushes, diagnosis, finish) counts as much as the training
THROUGHPUT_SPEC: dict[str, Any] = {
    "name": "bench-throughput",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 600},
    "model": {"hidden": [{"units": 32}, {"units": 32}]},
    "training": {"epochs": 100, "batch_size": 32},
    "monitor": {"stop_on_explosion": False},
}


def bench_throughput(server: Server, n_jobs: int) -> dict[str, float]:
    """Submit n_jobs at once; jobs/s until the last is terminal."""
    t0 = time.perf_counter()
    ids = [server.http.post("/v1/jobs", json={**THROUGHPUT_SPEC, "seed": i}).json()["id"]
           for i in range(n_jobs)]
    pending = set(ids)
    while pending:
        page = server.http.get("/v1/jobs", params={
            "limit": 200, "status": ["succeeded", "failed", "cancelled"]}).json()["items"]
        pending -= {j["id"] for j in page}
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    failed = [j for j in (server.http.get(f"/v1/jobs/{i}").json() for i in ids)
              if j["status"] != "succeeded"]
    assert not failed, failed[0]
    return {"jobs": n_jobs, "seconds": seconds, "jobs_per_s": n_jobs / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--port", type=int, default=8917)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--executor", choices=["local", "celery"], default="local")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "GRADWATCH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="a server and database to create the throw-away database from")
    parser.add_argument("--broker-url", default=os.environ.get(
        "GRADWATCH_BENCH_BROKER_URL", "redis://127.0.0.1:6379/12"))
    parser.add_argument("--overhead-only", action="store_true",
                        help="only (i), the API-vs-Trainer overhead (3x128 and 3x512)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="(i): repeats per size (default 5 for 3x128, 3 for 3x512)")
    parser.add_argument("--jobs", type=int, default=None, help="(v): jobs per run (default 40)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env: dict[str, str] = {}
        if args.database == "postgres":
            env["DATABASE_URL"] = stack.enter_context(postgres_database(args.postgres_url))
            upgrade(env["DATABASE_URL"])
        if args.executor == "celery":
            env.update(GRADWATCH_EXECUTOR="celery", GRADWATCH_BROKER_URL=args.broker_url,
                       GRADWATCH_BROKER_KEY_PREFIX=stack.enter_context(broker_prefix(args.broker_url)),
                       GRADWATCH_QUEUE="gradwatch-bench")
        figures = run(args, tmp, env)
    print(json.dumps(figures, indent=2))
    report(figures, args)


def run(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    steps = 25_000 if args.quick else 250_000
    n_layers = 4
    cores = os.cpu_count() or 1
    settings = Settings(data_dir=tmp, workers=0, database_url=env.get("DATABASE_URL"))
    celery = args.executor == "celery"
    workers = Workers(tmp, env)
    figures: dict[str, Any] = {"database": args.database, "executor": args.executor}
    server = Server(tmp, args.port, workers=cores, extra_env=env)  # the default pool size
    try:
        if celery:
            workers.start(1, concurrency=cores)  # as many job processes as the local default
        figures["i_overhead"] = bench_overhead(
            server, args.repeats or (1 if args.quick else 5), OVERHEAD_SPEC)
        figures["i_overhead_wide"] = bench_overhead(
            server, args.repeats or (1 if args.quick else 3), OVERHEAD_SPEC_WIDE)
        if args.overhead_only:
            return figures
        job_id, ingest_s, rows = seed_job(settings, steps, n_layers)
        figures["ii_ingest"] = {"layer_steps": steps * n_layers, "rows": rows,
                                "seconds": ingest_s, "rows_per_s": rows / ingest_s,
                                "layer_steps_per_s": steps * n_layers / ingest_s}
        figures["iii_gradients_query"] = {"layer_steps": steps * n_layers, "max_points": 1000,
                                          **bench_query(server, job_id,
                                                        repeats=5 if args.quick else 15)}
        figures["iv_get_job_rps"] = bench_rps(server, job_id, seconds=2 if args.quick else 5,
                                              threads=4)
        if celery:
            n_jobs = args.jobs or (12 if args.quick else 40)
            workers.stop_all()
            workers.start(1)
            bench_throughput(server, 2)  # warm up
            one = bench_throughput(server, n_jobs)
            workers.start(1)
            two = bench_throughput(server, n_jobs)
            figures["v_throughput"] = {"one_worker": one, "two_workers": two,
                                       "scaling": two["jobs_per_s"] / one["jobs_per_s"]}
    finally:
        workers.stop_all()
        server.close()
    return figures


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    where = f"{args.database}, {args.executor} executor"
    for label, key in (("3x128, batch 32", "i_overhead"), ("3x512, batch 128", "i_overhead_wide")):
        o = figures[key]
        print(f"(i)   API vs Trainer ({label}; {where}): {o['api_s']:.2f} s vs "
              f"{o['direct_s']:.2f} s for {o['steps']} steps "
              f"({1000 * o['direct_s'] / o['steps']:.2f} ms/step) -> overhead "
              f"{o['overhead_pct']:+.1f} % (best of runs {o['overhead_pct_best_of']:+.1f} %; "
              "target <= 15 %)")
    if "ii_ingest" not in figures:  # --overhead-only
        return
    ingest = figures["ii_ingest"]
    print(f"(ii)  ingest into {args.database}: {ingest['layer_steps_per_s']:,.0f} layer-steps/s "
          f"({ingest['layer_steps']:,} layer-steps in {ingest['seconds']:.1f} s, rollups "
          "included; bench/history_store.py has the store's own figures)")
    query = figures["iii_gradients_query"]
    print(f"(iii) gradients?max_points=1000 on {query['layer_steps']:,} layer-steps: "
          f"{query['all_layers_all_metrics_ms']:.1f} ms all layers x 8 series; "
          f"{query['all_layers_grad_norm_ms']:.1f} ms grad_norm only; "
          f"{query['one_layer_all_metrics_ms']:.1f} ms one layer (target < 100 ms)")
    print(f"(iv)  GET /v1/jobs/{{id}}: {figures['iv_get_job_rps']:,.0f} requests/s "
          "(4 client threads)")
    if "v_throughput" in figures:
        v = figures["v_throughput"]
        print(f"(v)   {v['one_worker']['jobs']} small jobs: 1 worker "
              f"{v['one_worker']['jobs_per_s']:.2f} jobs/s, 2 workers "
              f"{v['two_workers']['jobs_per_s']:.2f} jobs/s -> scaling x{v['scaling']:.2f}")


if __name__ == "__main__":
    main()
