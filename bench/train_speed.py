"""Training speed: gradwatch's NumPy trainer (full telemetry) vs PyTorch CPU, side by side.

Same architecture, float32, same batch size, plain SGD, same thread count. Prints steps/s
medians, the ratio gradwatch/torch per config, the telemetry overhead (on vs off, and with the
online monitor), and config (c)'s share of NumPy's own float32 matmul peak.

    python bench/train_speed.py [--repeats 5] [--steps N] [--threads T]

Runs are interleaved (gradwatch, torch, gradwatch-no-telemetry, ...) and repeated; medians
are quoted because this machine is shared and noisy. Not a test: figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import native_blas  # noqa: F401  (re-exec without a forced OpenBLAS kernel, before NumPy)
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import Trainer, TrainingSpec


@dataclass
class Config:
    key: str
    title: str
    spec: dict[str, Any]
    steps: int
    target: float  # required gradwatch/torch ratio


def _configs(standardize: bool = False) -> list[Config]:
    common = {"seed": 0, "dtype": "float32", "schedule": {"name": "constant"},
              "clipping": {"mode": "none"},
              "monitor": {"stop_on_explosion": False, "stop_on_non_finite": False}}

    def spec(data: dict[str, Any], hidden: list[dict[str, Any]], batch: int, loss: str,
             lr: float, init: str = "he_normal") -> dict[str, Any]:
        if standardize:  # --standardize: unsaturated softmax, no float32-subnormal gradients
            data = {**data, "standardize": True}
        return {**common, "data": data, "loss": loss,
                "model": {"hidden": hidden, "init": {"scheme": init}},
                "optimizer": {"name": "sgd", "lr": lr},
                "training": {"epochs": 1000, "batch_size": batch, "validation_split": 0.0}}

    relu = "relu"
    return [
        Config("a", "784-256-256-10 ReLU, batch 128",
               spec({"source": "synthetic", "name": "blobs", "n_samples": 4096, "n_features": 784,
                     "n_classes": 10}, [{"units": 256, "activation": relu}] * 2, 128,
                    "cross_entropy", 0.01), 150, 1.3),
        Config("b", "20 x 64 tanh, batch 64, MSE",
               spec({"source": "synthetic", "name": "linear", "n_samples": 4096, "n_features": 64},
                    [{"units": 64, "activation": "tanh"}] * 20, 64, "mse", 0.001,
                    "xavier_normal"), 400, 2.5),
        Config("c", "784-1024-1024-10 ReLU, batch 256",
               spec({"source": "synthetic", "name": "blobs", "n_samples": 4096, "n_features": 784,
                     "n_classes": 10}, [{"units": 1024, "activation": relu}] * 2, 256,
                    "cross_entropy", 0.01), 40, 1.1),
        Config("d", "2-16-1, batch 32",
               spec({"source": "synthetic", "name": "linear", "n_samples": 4096, "n_features": 2},
                    [{"units": 16, "activation": relu}], 32, "mse", 0.01), 2000, 5.0),
    ]


CLOCK = time.perf_counter  # --cpu-time: time.process_time (a loaded machine; 1 thread)


def time_gradwatch(spec: TrainingSpec, steps: int, telemetry: bool, monitor: bool) -> float:
    """Steps per second of Trainer.run over ``steps`` steps (setup excluded)."""
    s = spec.model_copy(update={"training": spec.training.model_copy(update={"max_steps": steps})})
    trainer = Trainer(s, telemetry=telemetry, monitor=monitor)
    start = CLOCK()
    result = trainer.run(keep_records=False)
    seconds = CLOCK() - start
    assert result.steps_completed == steps, result.stop_reason
    return steps / seconds


def time_torch(torch: Any, spec: TrainingSpec, steps: int, trainer: Trainer) -> float:
    """Steps per second of the equivalent torch loop on the same data."""
    nn = torch.nn
    sizes = spec.layer_sizes()
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}
    mods: list[Any] = []
    for i in range(len(sizes) - 1):
        mods.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(spec.model.hidden):
            mods.append(act[spec.model.hidden[i].activation]())
    model = nn.Sequential(*mods)
    # the same starting point as gradwatch's run (torch's default init is ~2.4x smaller per
    # layer than He normal: on (c) it kept the logits small where gradwatch's softmax
    # saturated and its gradients went float32-subnormal, i.e. a different computation)
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, W, b in zip(linears, trainer.network.W, trainer.network.b, strict=True):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b.reshape(-1)))
    opt = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr)
    loss_fn = nn.CrossEntropyLoss() if spec.loss == "cross_entropy" else nn.MSELoss()
    X = torch.from_numpy(trainer.data.X_train)
    y = torch.from_numpy(trainer._targets(trainer.data.y_train))
    n, bs = len(X), spec.training.batch_size
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    start = CLOCK()
    pos = 0
    for _ in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
    loss.item()
    return steps / (CLOCK() - start)


def matmul_peak(threads: int) -> float:
    """NumPy float32 GEMM throughput (GFLOP/s) on config (c)'s largest shapes, best of runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    best = 0.0
    with threadpool_limits(threads):
        for _ in range(30):
            t = time.perf_counter()
            for _ in range(10):
                np.matmul(a, b)
            best = max(best, 10 * 2 * 256 * 1024 * 1024 / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_step(sizes: list[int], batch: int) -> float:
    fwd = sum(2 * batch * a * b for a, b in itertools.pairwise(sizes))
    dx = sum(2 * batch * a * b for a, b in itertools.pairwise(sizes[1:]))
    return fwd + fwd + dx  # forward, dW, dx (no dx for the first layer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="abcd", help="configs to run, e.g. 'ad'")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as set (slower kernel)")
    ap.add_argument("--standardize", action="store_true",
                    help="the same configs with data.standardize: true (inputs at unit "
                         "scale: (c)'s softmax stays unsaturated, so its float32 gradients "
                         "do not go subnormal; bench/README.md explains)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this process's CPU time, not the wall clock: on a "
                         "loaded shared machine, with --threads 1 (torch's spinning OpenMP "
                         "threads would count otherwise)")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    try:
        import torch
    except ImportError:
        sys.exit("torch is needed for this benchmark: pip install torch==2.13.0")
    torch.set_num_threads(args.threads)
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"numpy {np.__version__} BLAS {[(b['internal_api'], b.get('architecture')) for b in blas]}"
          f"; torch {torch.__version__}; threads {args.threads};"
          f" OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')};"
          f" clock {'CPU time' if args.cpu_time else 'wall'}; load average"
          f" {os.getloadavg()[0]:.1f}; data.standardize {args.standardize}")
    with threadpool_limits(args.threads):
        for cfg in _configs(args.standardize):
            if cfg.key not in args.only:
                continue
            spec = TrainingSpec.model_validate(cfg.spec)
            ref = Trainer(spec)
            runs: dict[str, list[float]] = {"gw": [], "torch": [], "off": [], "mon": []}
            time_gradwatch(spec, max(cfg.steps // 10, 5), True, False)  # warm-up
            time_torch(torch, spec, max(cfg.steps // 10, 5), ref)
            for _ in range(args.repeats):
                runs["gw"].append(time_gradwatch(spec, cfg.steps, True, False))
                runs["torch"].append(time_torch(torch, spec, cfg.steps, ref))
                runs["off"].append(time_gradwatch(spec, cfg.steps, False, False))
                runs["mon"].append(time_gradwatch(spec, cfg.steps, True, True))
            med = {k: statistics.median(v) for k, v in runs.items()}
            ratio = med["gw"] / med["torch"]
            overhead = med["off"] / med["gw"] - 1
            mon_overhead = med["off"] / med["mon"] - 1
            ok = "meets" if ratio >= cfg.target else "MISSES"
            print(f"({cfg.key}) {cfg.title}: gradwatch {med['gw']:.0f} steps/s (telemetry on), "
                  f"torch {med['torch']:.0f} steps/s -> ratio {ratio:.2f}x "
                  f"[target >= {cfg.target:.1f}x: {ok}]; telemetry overhead {overhead * 100:+.1f}%"
                  f" [target <= 10%]"
                  f" (with the monitor too: {mon_overhead * 100:+.1f}%); telemetry off {med['off']:.0f} steps/s")
            if cfg.key == "c":
                peak = matmul_peak(args.threads)
                achieved = flops_per_step(spec.layer_sizes(), spec.training.batch_size) * med["gw"] / 1e9
                print(f"    (c) achieves {achieved:.1f} GFLOP/s = {achieved / peak * 100:.0f}% of "
                      f"NumPy float32 matmul peak {peak:.1f} GFLOP/s [target >= 60%]")


if __name__ == "__main__":
    main()
