"""A 64-member sweep end to end through the API vs the same 64 members as separate jobs.

A real server (uvicorn, default settings but for a temporary SQLite database) with 2 local
worker processes (this machine's cores), warmed up by a few tiny jobs first. (1) ``POST /v1/sweeps`` with the small-MLP sweep of
``bench/sweep_speed.py`` (2-32-32-1, lr x init std 8 x 8, float32), wait until every member
finished, then ``GET /v1/sweeps/{id}/plots/stability``: wall time from the POST to the PNG.
(2) the same 64 member specs as 64 ``POST /v1/jobs``, waiting until all finished.
(3) ``--large-post``: how long ``POST /v1/sweeps`` takes to answer for the largest sweep
allowed (1,024 members of a tiny spec, 32 x 32) while the workers train it (median of 3;
each sweep is cancelled and deleted before the next).

    python bench/sweep_api.py [--workers 2] [--large-post]

Not a test: figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_speed import LRS, STDS, sweep

from app.main import create_app
from app.settings import Settings

TERMINAL = {"succeeded", "failed", "cancelled"}


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def base_spec() -> dict[str, Any]:
    spec: dict[str, Any] = sweep("small")[1][0].model_dump(mode="json")
    return spec


def warm_up(http: httpx.Client, workers: int) -> None:
    """Wait until every worker process has started and run a job (imports done)."""
    tiny = {"data": {"source": "synthetic", "name": "moons", "n_samples": 40},
            "model": {"hidden": [{"units": 4}]}, "training": {"epochs": 1, "batch_size": 8}}
    ids = [http.post("/v1/jobs", json=tiny).json()["id"] for _ in range(2 * workers)]
    while any(http.get(f"/v1/jobs/{i}").json()["status"] not in TERMINAL for i in ids):
        time.sleep(0.1)


def run_sweep(http: httpx.Client) -> tuple[float, dict[str, Any]]:
    body = {"spec": base_spec(), "axes": [{"path": "optimizer.lr", "values": LRS},
                                          {"path": "model.init.std", "values": STDS}]}
    t0 = time.perf_counter()
    r = http.post("/v1/sweeps", json=body)
    r.raise_for_status()
    sweep_id = r.json()["id"]
    while True:
        data: dict[str, Any] = http.get(f"/v1/sweeps/{sweep_id}").json()
        if data["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    png = http.get(f"/v1/sweeps/{sweep_id}/plots/stability",
                   params={"x": "optimizer.lr", "y": "model.init.std"})
    png.raise_for_status()
    return time.perf_counter() - t0, data


def large_post(http: httpx.Client, repeats: int = 3) -> list[float]:
    """Seconds to answer ``POST /v1/sweeps`` for 1,024 members, ``repeats`` times."""
    tiny = {"data": {"source": "synthetic", "name": "moons", "n_samples": 100},
            "model": {"hidden": [{"units": 8}]}, "training": {"epochs": 1, "batch_size": 50}}
    body = {"name": "1,024 members", "spec": tiny,
            "axes": [{"path": "optimizer.lr", "log_range": [1e-4, 10.0], "points": 32},
                     {"path": "model.init.std", "log_range": [1e-3, 10.0], "points": 32}]}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = http.post("/v1/sweeps", json=body, timeout=300)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        sweep_id = r.json()["id"]
        http.post(f"/v1/sweeps/{sweep_id}/cancel").raise_for_status()
        while http.get(f"/v1/sweeps/{sweep_id}", params={"members": "false"}
                       ).json()["status"] in ("queued", "running"):
            time.sleep(0.2)
        http.delete(f"/v1/sweeps/{sweep_id}").raise_for_status()
    return times


def run_jobs(http: httpx.Client) -> tuple[float, list[dict[str, Any]]]:
    specs = [s.model_dump(mode="json") for s in sweep("small")[1]]
    t0 = time.perf_counter()
    ids = [http.post("/v1/jobs", json=s).json()["id"] for s in specs]
    jobs: list[dict[str, Any]] = []
    while True:
        jobs = [http.get(f"/v1/jobs/{i}").json() for i in ids]
        if all(j["status"] in TERMINAL for j in jobs):
            break
        time.sleep(0.2)
    return time.perf_counter() - t0, jobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--large-post", action="store_true",
                        help="only time POST /v1/sweeps of 1,024 members")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=f"sqlite:///{tmp}/bench.db",
                            workers=args.workers)
        server, thread, url = serve(settings)
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                warm_up(http, args.workers)
                if args.large_post:
                    times = large_post(http)
                    print(f"POST /v1/sweeps, 1,024 members, {args.workers} workers busy: "
                          f"median {statistics.median(times):.2f} s "
                          f"(runs {', '.join(f'{t:.2f}' for t in times)} s)")
                    return
                t_sweep, data = run_sweep(http)
                steps = data["progress"]["step"]
                print(f"sweep through the API: 64 members, {steps} member-steps, "
                      f"{data['status']}, map included: {t_sweep:.1f} s "
                      f"({steps / t_sweep:,.0f} member-steps/s)")
                t_jobs, jobs = run_jobs(http)
                steps_j = sum(j["progress"]["step"] for j in jobs)
                print(f"64 separate jobs through the API ({args.workers} workers): {t_jobs:.1f} s "
                      f"({steps_j / t_jobs:,.0f} member-steps/s); speed-up "
                      f"{t_jobs / t_sweep:.1f}x; same member-steps: {steps_j == steps}")
        finally:
            server.should_exit = True
            thread.join(timeout=60)


if __name__ == "__main__":
    main()
