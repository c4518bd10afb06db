"""Sweep speed: a 64-member sweep (lr x init std, 8 x 8) trained batched vs one at a time.

Two architectures, float32: a 2-32-32-1 MLP (moons, binary cross-entropy, batch 32) and a
784-256-256-10 MLP (784-feature blobs, cross-entropy, batch 128). The same 64 member specs are
trained (1) as one stack by ``core.batched.BatchedTrainer`` and (2) one after another by
``core.Trainer(spec).run()`` in this process, side by side, both (a) with full telemetry and
the online monitor (what a job records; every member's kept history is read inside the timing,
as a job's diagnosis reads it) and (b) with telemetry and monitor off (the training
computation alone). Prints member-steps per second (steps completed by all members / wall
time; members that explode stop early on both sides), medians of interleaved repeats, the
speed-up, and how far the batched members' losses are from their single runs.

    python bench/sweep_speed.py [--repeats 3] [--threads 2] [--only small,large]

Not a test: figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import native_blas  # noqa: F401  (re-exec without a forced OpenBLAS kernel, before NumPy)
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import Trainer, TrainingResult, TrainingSpec
from core.batched import BatchedTrainer

LRS = np.geomspace(1e-3, 3.0, 8).tolist()
STDS = np.geomspace(0.01, 1.0, 8).tolist()


def sweep(key: str, standardize: bool = False) -> tuple[str, list[TrainingSpec]]:
    """The 64 member specs of one configuration (``standardize``: data.standardize on)."""
    if key == "small":
        title = "2-32-32-1 (moons, BCE, batch 32, 300 steps)"
        base: dict[str, Any] = {
            "data": {"source": "synthetic", "name": "moons", "n_samples": 1000},
            "loss": "binary_cross_entropy",
            "model": {"hidden": [{"units": 32}, {"units": 32}]},
            "training": {"epochs": 100, "batch_size": 32, "max_steps": 300},
        }
    else:
        title = "784-256-256-10 (blobs, CE, batch 128, 40 steps)"
        base = {
            "data": {"source": "synthetic", "name": "blobs", "n_samples": 2048,
                     "n_features": 784, "n_classes": 10, "noise": 4.0},
            "model": {"hidden": [{"units": 256}, {"units": 256}]},
            "training": {"epochs": 100, "batch_size": 128, "max_steps": 40},
        }
    if standardize:  # --standardize: inputs at unit scale, softmax unsaturated
        base = {**base, "data": {**base["data"], "standardize": True}}
        title += ", data.standardize"
    specs = []
    for lr in LRS:
        for std in STDS:
            spec = {**base, "seed": 0, "dtype": "float32",
                    "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
                    "model": {**base["model"], "init": {"scheme": "normal", "std": std}}}
            specs.append(TrainingSpec.model_validate(spec))
    return title, specs


def _read_histories(results: list[TrainingResult]) -> None:
    """Touch every member's kept history, as a job's final diagnosis reads it (a stacked run
    builds its members' records only when first read), so both sides pay for their records."""
    for r in results:
        len(r.steps)


def run_batched(specs: list[TrainingSpec],
                full: bool) -> tuple[float, float, list[TrainingResult]]:
    t0, c0 = time.perf_counter(), time.process_time()
    results = BatchedTrainer(specs, telemetry=full, monitor=full).run(keep_records=full)
    _read_histories(results)
    return time.perf_counter() - t0, time.process_time() - c0, results


def run_single(specs: list[TrainingSpec],
               full: bool) -> tuple[float, float, list[TrainingResult]]:
    t0, c0 = time.perf_counter(), time.process_time()
    results = [Trainer(s, telemetry=full, monitor=full).run(keep_records=full) for s in specs]
    _read_histories(results)
    return time.perf_counter() - t0, time.process_time() - c0, results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="small,large")
    parser.add_argument("--standardize", action="store_true",
                        help="the same sweeps with data.standardize: true (the large sweep's "
                             "softmax then stays unsaturated, no float32-subnormal gradients)")
    parser.add_argument("--keep-openblas-env", action="store_true",
                        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as set (slower kernel)")
    args = parser.parse_args()
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"numpy {np.__version__} BLAS "
          f"{[(b['internal_api'], b.get('architecture')) for b in blas]} threads {args.threads}")
    with threadpool_limits(args.threads):
        for key in args.only.split(","):
            title, specs = sweep(key, args.standardize)
            print(f"\n== {key}: {title}, {len(specs)} members (lr x init std, 8 x 8)")
            for full in (True, False):
                mode = "telemetry + monitor" if full else "telemetry off"
                times: dict[str, list[float]] = {"batched": [], "single": []}
                cpu: dict[str, list[float]] = {"batched": [], "single": []}
                res: dict[str, list[TrainingResult]] = {}
                load_before = os.getloadavg()[0]
                for _ in range(args.repeats):  # interleaved
                    for name, fn in (("batched", run_batched), ("single", run_single)):
                        t, c, res[name] = fn(specs, full)
                        times[name].append(t)
                        cpu[name].append(c)
                steps = sum(r.steps_completed for r in res["single"])
                assert steps == sum(r.steps_completed for r in res["batched"])
                same_stop = sum(a.stop_reason == b.stop_reason
                                for a, b in zip(res["single"], res["batched"], strict=True))
                rel = [abs(a.final_loss - b.final_loss) / max(abs(a.final_loss), 1e-30)
                       for a, b in zip(res["single"], res["batched"], strict=True)
                       if a.final_loss is not None and b.final_loss is not None
                       and np.isfinite(a.final_loss) and np.isfinite(b.final_loss)]
                load = os.getloadavg()[0]
                tb, ts = statistics.median(times["batched"]), statistics.median(times["single"])
                stops = sorted({r.stop_reason for r in res["single"]})
                print(f"  [{mode}] member-steps {steps} (stops: {stops}); load average "
                      f"{load_before:.1f} before, {load:.1f} after")
                print(f"    batched {steps / tb:10,.0f} member-steps/s  ({tb:.2f} s; runs "
                      f"{', '.join(f'{t:.2f}' for t in times['batched'])})")
                print(f"    single  {steps / ts:10,.0f} member-steps/s  ({ts:.2f} s; runs "
                      f"{', '.join(f'{t:.2f}' for t in times['single'])})")
                cb, cs = statistics.median(cpu["batched"]), statistics.median(cpu["single"])
                print(f"    CPU time (this process; less sensitive to the other users): "
                      f"batched {cb:.2f} s, single {cs:.2f} s, ratio {cs / cb:.1f}x")
                print(f"    speed-up {ts / tb:.1f}x; same stop reason {same_stop}/{len(specs)}; "
                      f"final loss max rel. difference {max(rel) if rel else float('nan'):.1e}")


if __name__ == "__main__":
    main()
