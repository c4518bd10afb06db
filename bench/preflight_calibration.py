"""Preflight calibration: preflight's explosion prediction against measured sweep verdicts.

Sweeps small spiral classifiers over learning rate x init std x depth, for ReLU and tanh
(``normal`` init, SGD momentum 0.9, 20 epochs), trains every member (batched), diagnoses it,
and compares the measured verdict ("exploding" or not) with preflight's prediction (risk
``high``/``critical`` from an explosion finding, :func:`core.stability.predicted_risk`). Then
replays preflight's decision rule on its own evidence (first-update ratio on the probe batch,
predicted depth gain) for a grid of thresholds and prints the agreement of each, so that the
thresholds in ``core/diagnostics/preflight.py`` can be chosen on measured data.

    python bench/preflight_calibration.py [--json out.json]

Not a test: the measured cases that decide the thresholds are in tests/test_preflight_calibration.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits

import core
from core.stability import calibration, predicted_risk, train_sweep
from core.sweep import SweepAxis, expand_sweep

ACTIVATIONS = ("relu", "tanh")
DEPTHS = (2, 4, 8)
AXES = [SweepAxis(path="model.init.std", log_range=[0.05, 1.0], points=6),
        SweepAxis(path="optimizer.lr", log_range=[1e-3, 1.0], points=6)]


def base(activation: str, depth: int) -> dict[str, Any]:
    return {
        "name": f"{activation}-{depth}",
        "seed": 0,
        "data": {"source": "synthetic", "name": "spirals", "n_samples": 600},
        "model": {"hidden": [{"units": 32, "activation": activation}] * depth,
                  "init": {"scheme": "normal", "std": 0.1}},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "training": {"epochs": 20, "batch_size": 32},
    }


def measure() -> list[dict[str, Any]]:
    """One row per member: its grid values, verdict, preflight risk and preflight evidence."""
    rows: list[dict[str, Any]] = []
    for act in ACTIVATIONS:
        for depth in DEPTHS:
            members = expand_sweep(base(act, depth), AXES)
            t0 = time.perf_counter()
            outcomes = train_sweep(members, with_preflight=False)
            t1 = time.perf_counter()
            for m, o in zip(members, outcomes, strict=True):
                report = core.preflight(m.spec)
                ratios = [lp.measured_update_ratio for lp in report.layers
                          if lp.measured_update_ratio is not None]
                rows.append({
                    "activation": act, "depth": depth,
                    "std": m.values["model.init.std"], "lr": m.values["optimizer.lr"],
                    "verdict": o.verdict, "risk": predicted_risk(m),
                    "update_ratio": max(ratios) if ratios else None,
                    "depth_gain": report.predicted_depth_gain,
                })
            print(f"  {act} depth {depth}: {len(members)} members trained in {t1 - t0:.1f} s, "
                  f"preflight {time.perf_counter() - t1:.1f} s", flush=True)
    return rows


def predict(row: dict[str, Any], update_high: float, depth_high: float) -> str:
    """Preflight's explosion rule with the given thresholds (``high`` or ``low``)."""
    ratio, gain = row["update_ratio"], row["depth_gain"]
    explode = (ratio is not None and ratio >= update_high) or gain >= depth_high
    return "high" if explode else "low"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the measured rows here")
    args = parser.parse_args()
    with threadpool_limits(1):
        rows = measure()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("current preflight:", calibration([(r["verdict"], r["risk"]) for r in rows]))
    results = []
    for u in (0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0):
        for d in (10.0, 30.0, 100.0, 1e3):
            cal = calibration([(r["verdict"], predict(r, u, d)) for r in rows])
            results.append((cal["agreement"], u, d, cal))
    results.sort(key=lambda x: -x[0])
    for agreement, u, d, cal in results[:8]:
        print(f"  update_high {u:<5} depth_high {d:<7}: agreement {agreement:.3f} {cal}")
    for act in ACTIVATIONS:
        for depth in DEPTHS:
            sub = [r for r in rows if r["activation"] == act and r["depth"] == depth]
            print(f"  {act} x{depth}: current "
                  f"{calibration([(r['verdict'], r['risk']) for r in sub])['agreement']:.3f}")


if __name__ == "__main__":
    main()
