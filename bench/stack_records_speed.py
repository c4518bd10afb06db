"""Stacked histories as records: what reading the members' kept steps costs.

A stacked run keeps each member's emitted rows as arrays and builds its
``TrainingResult.steps`` when first read (``core.stack_recording``: every present figure's
column converted in one ``tolist``, the records filled slot by slot). This times, in one
process and interleaved:

- ``column fill``: ``records_of`` on 64 blocks shaped like the small sweep's histories
  (270 rows, 3 layers, the figures a ReLU network records);
- ``constructors``: the same blocks through ``StepBlock.records`` (``StepRecord(...)`` and
  ``LayerRecord(...)`` per row, as the single trainer builds them);

then, once, the first read of every member's history after the small sweep trained batched
(bench/sweep_speed.py's "small"), garbage collection included, as a job's diagnosis reads it.

    python bench/stack_records_speed.py [--repeats 9]

CPU time (time.process_time), medians; each repeat frees the previous one's records.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import native_blas  # noqa: F401  (re-exec without a forced OpenBLAS kernel, before NumPy)
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep_speed import sweep

from core.batched import BatchedTrainer
from core.recording import n_values
from core.stack_records import records_of
from core.telemetry import StepBlock, StepRecord

N_LAYERS, ROWS, MEMBERS = 3, 270, 64


def _blocks() -> list[StepBlock]:
    rng = np.random.default_rng(0)
    present = np.ones(n_values(N_LAYERS), dtype=bool)
    layers = present[4:].reshape(N_LAYERS, 8)
    layers[:, 7] = False  # no saturated fraction for ReLU and the output layer
    layers[-1, 6] = False  # nor a dead fraction for the output layer
    out = []
    for _ in range(MEMBERS):
        values = rng.normal(size=(ROWS, len(present)))
        values[:, ~present] = np.nan
        out.append(StepBlock(N_LAYERS, np.arange(ROWS), np.arange(ROWS) // 25,
                             np.zeros(ROWS, dtype=bool), values,
                             np.broadcast_to(present, values.shape)))
    return out


def _cpu(build: Callable[[], list[list[StepRecord]]]) -> float:
    gc.collect()
    c0 = time.process_time()
    out = build()
    cpu = time.process_time() - c0
    del out
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    blocks = _blocks()
    ways: dict[str, Callable[[], list[list[StepRecord]]]] = {
        "column fill": lambda: [records_of(b) for b in blocks],
        "constructors": lambda: [b.records() for b in blocks],
    }
    assert repr(ways["column fill"]()) == repr(ways["constructors"]())
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeats):
        for name, build in ways.items():
            cpu[name].append(_cpu(build))
    n = MEMBERS * ROWS
    print(f"{MEMBERS} blocks x {ROWS} rows, {N_LAYERS} layers ({n} step records, "
          f"{n * N_LAYERS} layer records), median of {args.repeats}:")
    for name, ts in cpu.items():
        med = statistics.median(ts)
        print(f"  {name:13s} {1e3 * med:6.1f} ms CPU  ({1e9 * med / n:.0f} ns per step)")

    title, specs = sweep("small")
    with threadpool_limits(1):
        results = BatchedTrainer(specs, telemetry=True, monitor=True).run(keep_records=True)
        c0 = time.process_time()
        kept = sum(len(r.steps) for r in results)
        read = time.process_time() - c0
    print(f"small sweep ({title}): first read of {len(results)} histories, {kept} records: "
          f"{1e3 * read:.1f} ms CPU (collections included)")


if __name__ == "__main__":
    main()
