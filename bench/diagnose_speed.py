"""Diagnosis speed: CPU time of ``core.diagnose`` on (a) the 64 members of the small sweep and
(b) one long run.

(a) is what the worker does after a sweep: bench/sweep_speed.py's 2-32-32-1 sweep (moons, BCE,
batch 32, 300 steps, lr x init std 8 x 8), trained batched with every record kept, each member
diagnosed. (b) is a 10,000-step 4x32 ReLU network (spirals, Adam, batch 32, monitor stop off),
every record kept. Training happens once, outside the timing (``--cache PATH`` keeps the
trained histories in a pickle so that another checkout diagnoses the very same records:
``PYTHONPATH=/other/checkout python bench/diagnose_speed.py --cache /tmp/x.pkl``). Prints the
median process CPU time of ``--repeats`` diagnoses of each, NumPy limited to one thread.

    python bench/diagnose_speed.py [--repeats 5] [--cache PATH]

Not a test: figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import native_blas  # noqa: F401  (re-exec without a forced OpenBLAS kernel, before NumPy)
from threadpoolctl import threadpool_limits

import core
from core import Trainer, TrainingResult, TrainingSpec, diagnose
from core.batched import BatchedTrainer

LONG: dict[str, Any] = {
    "name": "long-4x32-relu-adam",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 400},
    "model": {"hidden": [{"units": 32, "activation": "relu"}] * 4, "init": {"scheme": "he_normal"}},
    "loss": "cross_entropy",
    "optimizer": {"name": "adam", "lr": 0.003},
    "training": {"epochs": 100_000, "batch_size": 32, "max_steps": 10_000},
    "monitor": {"stop_on_explosion": False},
}


def histories() -> tuple[list[TrainingResult], TrainingResult]:
    """The 64 sweep members and the long run, trained."""
    from sweep_speed import sweep  # bench/ (after native_blas)

    _, specs = sweep("small")
    members = BatchedTrainer(specs).run(keep_records=True)
    long = Trainer(TrainingSpec.model_validate(LONG)).run()
    return members, long


def cpu(fn: Any) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=None,
                    help="pickle of the trained histories (written if missing)")
    args = ap.parse_args()
    with threadpool_limits(1):
        if args.cache is not None and args.cache.exists():
            members, long = pickle.loads(args.cache.read_bytes())
        else:
            members, long = histories()
            if args.cache is not None:
                args.cache.write_bytes(pickle.dumps((members, long)))
        diagnose(members[0])  # warm caches (the data's scale, imports)
        sweep_t: list[float] = []
        long_t: list[float] = []
        for _ in range(args.repeats):
            sweep_t.append(cpu(lambda: [diagnose(r) for r in members]))
            long_t.append(cpu(lambda: diagnose(long)))
    records = sum(len(r.steps) for r in members)
    print(f"core from {Path(core.__file__).resolve().parent}")
    print(f"(a) 64 sweep members ({records} records): median {statistics.median(sweep_t):.3f} s "
          f"CPU ({1e3 * statistics.median(sweep_t) / len(members):.2f} ms per member)")
    print(f"(b) long run ({len(long.steps)} records, {len(long.spec.model.hidden) + 1} layers): "
          f"median {statistics.median(long_t):.3f} s CPU")


if __name__ == "__main__":
    main()
