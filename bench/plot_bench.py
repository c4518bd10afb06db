"""Plot rendering time of a 1M-point history (target: under 1 s).

A plot never draws raw rows: the history is downsampled first with the history endpoints'
spike-preserving rule (min/max per bucket, first non-finite point kept), then drawn.

1. In memory: a 1,000,000-step run of 4 layers that climbs to Infinity, downsampled from raw
   points (the endpoint reads stored rollups instead, see the service bench (iii)), then
   rendered as PNG, SVG and heatmap.
2. ``--endpoint``: ``GET /v1/jobs/{id}/plots/gradients`` (and ``/heatmap``) on a stored job of
   250,000 steps x 4 layers (1,000,000 layer-steps, seeded like the service bench), in
   process through the ASGI app: query + diagnosis + rendering.

    .venv/bin/python bench/plot_bench.py [--steps 1000000] [--layers 4] [--endpoint]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import plots
from app.downsampling import Summary, downsample_points, plan_buckets


def history(steps: int, layers: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.arange(steps)
    values = np.exp(rng.normal(0.0, 0.2, size=(steps, layers))) * (1 + np.arange(layers))
    climb = x > int(steps * 0.9)
    values[climb] *= np.exp((x[climb] - steps * 0.9)[:, None] / (steps * 0.002))
    values[int(steps * 0.97):, 0] = np.inf
    values[int(steps * 0.97) + 1:, 1:] = np.nan
    return x, values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-points", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--endpoint", action="store_true",
                        help="also time the HTTP endpoint on a stored 1M layer-step job")
    args = parser.parse_args()
    steps, values = history(args.steps, args.layers)
    present = np.ones_like(values, dtype=bool)
    times: dict[str, list[float]] = {"downsample": [], "png": [], "svg": [], "heatmap png": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        plan = plan_buckets(0, args.steps - 1, args.max_points)
        units = Summary.from_points(steps, values, present)
        edges = [(steps[[0, -1]], values[[0, -1], j]) for j in range(args.layers)]
        series = downsample_points(units, plan.bucket_size, edges)
        layers = [plots.Series(s, v, f"layer {i}") for i, (s, v) in enumerate(series)]
        t1 = time.perf_counter()
        marks = plots.Marks(clip_threshold=5.0, first_non_finite_step=int(args.steps * 0.97),
                            first_bad_step=int(args.steps * 0.9))
        plots.gradients_plot(layers, marks, fmt="png")
        t2 = time.perf_counter()
        plots.gradients_plot(layers, marks, fmt="svg")
        t3 = time.perf_counter()
        plots.heatmap_plot(layers, marks, fmt="png")
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(dt)
    points = sum(s.size for s, _ in series)
    print(f"{args.steps:,} steps x {args.layers} layers -> {points:,} points drawn "
          f"(max_points {args.max_points}); median of {args.repeats}:")
    labels = {"downsample": "downsample raw points (not the endpoint's path)",
              "png": "render gradients PNG", "svg": "render gradients SVG",
              "heatmap png": "render heatmap PNG"}
    for key, values_ in times.items():
        print(f"  {labels[key]:48s} {statistics.median(values_) * 1000:8.1f} ms")
    if args.endpoint:
        endpoint(args.repeats)


def endpoint(repeats: int) -> None:
    import tempfile

    from fastapi.testclient import TestClient

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from service_bench import seed_job  # the service bench's 1M layer-step job

    from app.main import create_app
    from app.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=f"sqlite:///{tmp}/plots.db",
                            workers=0)
        with TestClient(create_app(settings)) as http:  # migrates the database
            job_id, seconds, rows = seed_job(settings, 250_000, 4)
            print(f"endpoint: seeded {rows:,} rows in {seconds:.1f} s; median of {repeats}:")
            for kind in ("gradients", "heatmap"):
                http.get(f"/v1/jobs/{job_id}/plots/{kind}")  # warm caches and fonts
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    response = http.get(f"/v1/jobs/{job_id}/plots/{kind}")
                    times.append(time.perf_counter() - t0)
                    assert response.status_code == 200, response.text
                print(f"  GET /plots/{kind:10s} {statistics.median(times) * 1000:8.1f} ms "
                      f"(target < 1000 ms)")


if __name__ == "__main__":
    main()
