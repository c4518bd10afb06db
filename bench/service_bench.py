"""Service benchmarks (not tests). Prints four figures; see bench/README.md.

    python bench/service_bench.py [--quick]

(i)   one job through the API (submit -> terminal, real worker process) vs the same spec
      through core.Trainer directly: overhead in %            (target <= 15 %)
(ii)  ingest rate of norm records into SQLite (rows/s), through the worker's sink
(iii) GET /v1/jobs/{id}/gradients?max_points=1000 on a job with 1,000,000 stored
      layer-steps: median latency                             (target < 100 ms)
(iv)  requests/s for GET /v1/jobs/{id}
"""

from __future__ import annotations

import argparse
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
from app.repositories import JobRepository  # noqa: E402
from app.services import submit_job, validate_spec  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.worker import DatabaseSink  # noqa: E402
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


class Server:
    """`gradwatch serve` in a subprocess (so the client does not share its GIL)."""

    def __init__(self, data_dir: Path, port: int, workers: int = 1) -> None:
        env = {**os.environ, "GRADWATCH_DATA_DIR": str(data_dir),
               "GRADWATCH_WORKERS": str(workers), "PYTHONPATH": str(ROOT)}
        env.pop("DATABASE_URL", None)
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port),
             "--log-level", "warning"], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def run_job(self, spec: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        job_id = self.http.post("/v1/jobs", json=spec).json()["id"]
        while True:
            job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return time.perf_counter() - t0, job
            time.sleep(0.01)

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_DIRECT = """
import json, sys, time
from app.executors.local import tune_malloc
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


def seed_job(settings: Settings, steps: int, n_layers: int, flush_every: int = 500) -> tuple[str, float, int]:
    """A succeeded job with `steps` x `n_layers` stored layer-steps; returns id, seconds, rows."""
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    with unit_of_work(factory) as session:
        spec = validate_spec({"data": {"source": "synthetic", "name": "spirals"},
                              "training": {"max_steps": steps, "epochs": 100_000}}, settings)
        job_id = submit_job(session, spec=spec, settings=settings).job.id
        JobRepository(session).transition(job_id, "running")
    records = [_record(s, n_layers) for s in range(steps)]
    sink = DatabaseSink(job_id, factory, total_steps=steps, flush_every=flush_every,
                        flush_interval=3600, progress_interval=3600)
    t0 = time.perf_counter()
    for i in range(0, steps, flush_every):
        sink.write_steps(records[i:i + flush_every])
    sink.close()
    seconds = time.perf_counter() - t0
    with unit_of_work(factory) as session:
        JobRepository(session).transition(job_id, "succeeded", stop_reason="completed")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--port", type=int, default=8917)
    args = parser.parse_args()
    steps = 25_000 if args.quick else 250_000
    n_layers = 4
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), workers=0)
        server = Server(Path(tmp), args.port, workers=os.cpu_count() or 1)  # the default
        try:
            overhead = bench_overhead(server, 1 if args.quick else 5, OVERHEAD_SPEC)
            overhead_wide = bench_overhead(server, 1 if args.quick else 3, OVERHEAD_SPEC_WIDE)
            job_id, ingest_s, rows = seed_job(settings, steps, n_layers)
            query = bench_query(server, job_id, repeats=5 if args.quick else 15)
            rps = bench_rps(server, job_id, seconds=2 if args.quick else 5, threads=4)
        finally:
            server.close()
    figures = {
        "i_overhead": overhead,
        "i_overhead_wide": overhead_wide,
        "ii_ingest": {"layer_steps": steps * n_layers, "rows": rows, "seconds": ingest_s,
                      "rows_per_s": rows / ingest_s,
                      "layer_steps_per_s": steps * n_layers / ingest_s},
        "iii_gradients_query": {"layer_steps": steps * n_layers, "max_points": 1000, **query},
        "iv_get_job_rps": rps,
    }
    print(json.dumps(figures, indent=2))
    for label, o in (("3x128, batch 32", overhead), ("3x512, batch 128", overhead_wide)):
        print(f"(i)   API vs Trainer ({label}): {o['api_s']:.2f} s vs {o['direct_s']:.2f} s "
              f"for {o['steps']} steps ({1000 * o['direct_s'] / o['steps']:.2f} ms/step) -> "
              f"overhead {o['overhead_pct']:+.1f} % (best of runs "
              f"{o['overhead_pct_best_of']:+.1f} %; target <= 15 %)")
    print(f"(ii)  ingest: {rows / ingest_s:,.0f} rows/s ({steps * n_layers:,} layer-steps + "
          f"{steps:,} step rows in {ingest_s:.1f} s, rollups included)")
    print(f"(iii) gradients?max_points=1000 on {steps * n_layers:,} layer-steps: "
          f"{query['all_layers_all_metrics_ms']:.1f} ms all layers x 8 series; "
          f"{query['all_layers_grad_norm_ms']:.1f} ms grad_norm only; "
          f"{query['one_layer_all_metrics_ms']:.1f} ms one layer (target < 100 ms)")
    print(f"(iv)  GET /v1/jobs/{{id}}: {rps:,.0f} requests/s (4 client threads)")


if __name__ == "__main__":
    main()
