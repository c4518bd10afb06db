"""The README's stability map: a deep ReLU network swept over learning rate x init std.

Expands the sweep (:mod:`core.sweep`), trains all 64 members as one batched computation
(:mod:`core.batched`), diagnoses each, asks preflight for each spec's risk, and renders the
map with preflight's predicted boundary and the recommended cell (``app.stability_plot``) to
``docs/images/stability-map.png``. Prints the timings, the boundary per init std, the
preflight calibration and the recommendation.

    python bench/stability_map.py [--out docs/images/stability-map.png] [--svg]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits

from app.stability_plot import render_stability_map
from core.stability import calibration, stability_grid, train_sweep
from core.sweep import SweepAxis, expand_sweep

BASE: dict[str, Any] = {
    "name": "deep-relu",
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 600},
    "model": {"hidden": [{"units": 32, "activation": "relu"}] * 8,
              "init": {"scheme": "normal", "std": 0.1}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 20, "batch_size": 32},
}
AXES = [SweepAxis(path="model.init.std", log_range=[0.05, 1.0], points=8),
        SweepAxis(path="optimizer.lr", log_range=[1e-3, 1.0], points=8)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1]
                                              / "docs/images/stability-map.png"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    members = expand_sweep(BASE, AXES)
    with threadpool_limits(args.threads):
        outcomes = train_sweep(members, with_preflight=False)
        t_train = time.perf_counter() - t0
        from core.stability import predicted_risk
        for m, o in zip(members, outcomes, strict=True):
            o.predicted_risk = predicted_risk(m)
    t_pre = time.perf_counter() - t0 - t_train
    grid = stability_grid(outcomes, x="optimizer.lr", y="model.init.std")
    png = render_stability_map(
        "learning rate (optimizer.lr)", "init std (model.init.std)", grid.x_values,
        grid.y_values, grid.verdict, grid.predicted_exploding(),
        recommended=grid.recommended_cell(),
        title="8 x 32 ReLU, spirals, SGD momentum 0.9, 20 epochs: verdict per member")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(png)
    steps = sum(1 for _ in members)
    print(f"{steps} members trained batched + diagnosed in {t_train:.1f} s; preflight "
          f"{t_pre:.1f} s; map -> {args.out}")
    for row in grid.rows:
        print(f"  std {row['y']:<8}: largest healthy lr {row['largest_healthy']}, smallest "
              f"exploding lr {row['smallest_exploding']}, preflight's first exploding lr "
              f"{row['smallest_predicted_exploding']}")
    for j, std in enumerate(grid.y_values):
        print(f"  std {std:<8}: " + " ".join(f"{(v or '-')[:4]:>4}" for v in grid.verdict[j])
              + "  | " + " ".join(f"{(r or '-')[:4]:>4}" for r in grid.risk[j]))
    print("calibration:", calibration([(o.verdict, o.predicted_risk or "low") for o in outcomes]))
    print("recommended:", grid.recommended_reason)


if __name__ == "__main__":
    main()
