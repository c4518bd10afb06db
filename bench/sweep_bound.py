"""How fast can batching make a sweep at most? The GEMM share of one-at-a-time training.

A batched sweep (``core.batched.BatchedTrainer``) computes each member's layer products with
the same BLAS ``gemm`` call per member as the member's own ``core.Trainer`` does (that is what
keeps every member's numbers bit-identical to its single run), so batching can only remove
the rest of a step: Python and per-call overhead, elementwise passes, telemetry. So no
bit-identical batched trainer can be faster than its own layer ``matmul``s: the speed-up over
one member at a time is at most (one-at-a-time CPU time) / (the batched run's matmul CPU time)
(Amdahl's law). This script trains the same 64 members as ``bench/sweep_speed.py`` both ways
with a timer around every ``matmul`` of ``core.layers`` and ``core.stacked`` (the layer
products; the stack's few statistics products count too, which only lowers the bound) and
prints each side's matmul share and that bound. It also times the one form that could beat
per-member ``gemm``s for a shared input: one large ``gemm`` over all members' first-layer
weights side by side, and whether its products are the per-member ones bit for bit (they
depend on the BLAS kernel: yes on some machines, no on others).

    python bench/sweep_bound.py [--only small,large] [--standardize] [--threads 1]

Not a test: figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import timeit
import types
from pathlib import Path
from typing import Any

import native_blas  # noqa: F401  (re-exec without a forced OpenBLAS kernel, before NumPy)
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_speed import sweep

import core.layers
import core.stack_activations
import core.stacked
from core import Trainer
from core.batched import BatchedTrainer


class _TimedNumpy(types.ModuleType):
    """``numpy`` for ``core.layers``, with its ``matmul`` timed (process CPU time)."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def matmul(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        out = np.matmul(*args, **kwargs)
        self.seconds += time.process_time() - t0
        self.calls += 1
        return out


# where the layer products are computed (and the stack's activation column sums, timed with
# them since they were computed in core.stacked)
_MODULES = (core.layers, core.stacked, core.stack_activations)


def _timed_run(fn: Any) -> tuple[float, float, int]:
    """(total CPU, CPU inside the layer ``matmul``s, their calls) of ``fn()``."""
    timed = _TimedNumpy()
    saved = [m.np for m in _MODULES]
    for m in _MODULES:
        m.np = timed  # type: ignore[attr-defined]
    try:
        c0 = time.process_time()
        fn()
        total = time.process_time() - c0
    finally:
        for m, np_ in zip(_MODULES, saved, strict=True):
            m.np = np_  # type: ignore[attr-defined]
    return total, timed.seconds, timed.calls


def _cpu(fn: Any) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def gemm_share(key: str, standardize: bool, full: bool) -> None:
    _, specs = sweep(key, standardize)

    def single() -> None:
        for s in specs:
            len(Trainer(s, telemetry=full, monitor=full).run(keep_records=full).steps)

    def batched() -> None:
        for r in BatchedTrainer(specs, telemetry=full, monitor=full).run(keep_records=full):
            len(r.steps)  # as bench/sweep_speed.py: both sides pay for their records

    single(), batched()  # warm-up
    # totals without the timer (it costs ~1 us a call), the matmul share with it
    t_single, t_batched = _cpu(single), _cpu(batched)
    _, g_single, n_single = _timed_run(single)
    _, g_batched, n_batched = _timed_run(batched)
    mode = "telemetry + monitor" if full else "telemetry off"
    print(f"  [{mode}]")
    print(f"    one at a time: {t_single:.2f} s CPU, of which layer matmuls {g_single:.2f} s "
          f"({n_single} calls)")
    print(f"    batched:       {t_batched:.2f} s CPU, of which layer matmuls {g_batched:.2f} s "
          f"({n_batched} calls); speed-up {t_single / t_batched:.1f}x")
    print(f"    bound: a bit-identical batched trainer (the same gemm per member) is at most "
          f"{t_single / g_batched:.1f}x faster than one at a time")


def one_big_gemm(n_in: int, batch: int, units: int, k: int = 64) -> None:
    rng = np.random.default_rng(0)
    f = np.float32
    X = rng.standard_normal((batch, n_in)).astype(f)
    W = rng.standard_normal((k, n_in, units)).astype(f)
    Wc = np.ascontiguousarray(W.transpose(1, 0, 2).reshape(n_in, k * units))
    out, outc = np.empty((k, batch, units), f), np.empty((batch, k * units), f)
    a = min(timeit.repeat(lambda: np.matmul(X, W, out=out), number=3, repeat=3)) / 3
    b = min(timeit.repeat(lambda: np.matmul(X, Wc, out=outc), number=3, repeat=3)) / 3
    flops = 2 * batch * n_in * units * k
    # the same products? (what a batched trainer would need to use the wide form: each
    # member's columns equal to its own gemm's, bit for bit)
    same = np.array_equal(out, outc.reshape(batch, k, units).transpose(1, 0, 2))
    print(f"  first layer, shared input ({batch}x{n_in} @ {n_in}x{units}, {k} members): "
          f"{k} gemms {a * 1e3:.2f} ms ({flops / a / 1e9:.0f} GFLOP/s), one {batch}x{n_in} @ "
          f"{n_in}x{k * units} gemm {b * 1e3:.2f} ms ({flops / b / 1e9:.0f} GFLOP/s); "
          f"bit-identical to the per-member products: {'yes' if same else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="small,large")
    parser.add_argument("--standardize", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-openblas-env", action="store_true")
    args = parser.parse_args()
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"numpy {np.__version__} BLAS "
          f"{[(b['internal_api'], b.get('architecture')) for b in blas]} threads {args.threads}"
          f"; load average {os.getloadavg()[0]:.1f}")
    with threadpool_limits(args.threads):
        for key in args.only.split(","):
            title, _ = sweep(key, args.standardize)
            print(f"\n== {key}: {title}")
            for full in (True, False):
                gemm_share(key, args.standardize, full)
            if key == "large":
                one_big_gemm(784, 128, 256)
            else:
                one_big_gemm(2, 32, 32)


if __name__ == "__main__":
    main()
