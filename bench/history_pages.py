"""Every point of a long run through the HTTP API (issue 13): paged JSON vs paged Arrow vs one
unpaged response, against a real `gradwatch serve` process (so its memory can be read).

    .venv/bin/python bench/history_pages.py [--steps 100000] [--database sqlite|postgres]

The job is bench/history_store.py's plausible 10-layer telemetry (noisy float64 norms and
statistics, spikes, NaN/Inf). For each way of reading, a fresh server: a small warm-up read,
then `GET /v1/jobs/{id}/gradients?max_points=2147483648` (all 80 series, every step),
following `Link: rel="next"` to the end. Printed: pages, bytes, wall time, and the server's
peak resident memory (VmHWM) above its level after the warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.migrate import upgrade  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.history_store import N_LAYERS, ingest  # noqa: E402
from bench.service_procs import postgres_database  # noqa: E402

ARROW = "application/vnd.apache.arrow.stream"
MIB = 1024**2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(url: str, data_dir: Path, budget: int | None) -> Iterator[tuple[httpx.Client, int]]:
    """A `gradwatch serve` (no workers) on ``url``: an HTTP client and its pid."""
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    env.update(DATABASE_URL=url, GRADWATCH_DATA_DIR=str(data_dir), GRADWATCH_WORKERS="0",
               GRADWATCH_LOG_FORMAT="text")
    if budget is not None:
        env["GRADWATCH_MAX_HISTORY_VALUES"] = str(budget)
    process = subprocess.Popen([str(Path(sys.executable).with_name("gradwatch")), "serve",
                                "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if http.get("/healthz").status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        yield http, process.pid
    finally:
        http.close()
        process.terminate()
        process.wait(timeout=30)


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) * 1024


def read_every_point(http: httpx.Client, job_id: str, accept: str) -> tuple[int, int, float]:
    """(pages, bytes, seconds) of the whole read, following the Link headers."""
    target: str | None = f"/v1/jobs/{job_id}/gradients?max_points={2**31}"
    pages = size = 0
    t0 = time.perf_counter()
    while target is not None:
        with http.stream("GET", target, headers={"Accept": accept}) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.read()[:500]!r}")
            size += sum(len(block) for block in r.iter_bytes())
            link = r.headers.get("link")
        pages += 1
        found = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        target = found.group(1) if found else None
    return pages, size, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp}/bench.db"
        if args.database == "postgres":
            url = stack.enter_context(postgres_database(
                os.environ.get("GRADWATCH_TEST_POSTGRES_URL",
                               "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")))
        upgrade(url)
        job_id, _ = ingest(Settings(database_url=url, workers=0), args.steps, seed=1)
        values = args.steps * N_LAYERS * 8
        print(f"{args.database}, {args.steps:,} steps x {N_LAYERS} layers x 8 statistics = "
              f"{values:,} values; load average {os.getloadavg()[0]:.1f}")
        print(f"{'read':<44} {'pages':>5} {'MiB':>7} {'s':>6} {'peak +MiB':>9}")
        for label, accept, budget in [
                ("JSON, pages of 2M values (default budget)", "application/json", None),
                ("Arrow, pages of 2M values (default budget)", ARROW, None),
                ("JSON, one response (budget lifted)", "application/json", 10**9),
                ("Arrow, one response (budget lifted)", ARROW, 10**9)]:
            with serve(url, Path(tmp), budget) as (http, pid):
                http.get(f"/v1/jobs/{job_id}/gradients", params={"end_step": 999})
                http.get(f"/v1/jobs/{job_id}/metrics", params={"format": "arrow"})
                baseline = peak_rss(pid)
                pages, size, seconds = read_every_point(http, job_id, accept)
                growth = (peak_rss(pid) - baseline) / MIB
            print(f"{label:<44} {pages:>5} {size / MIB:>7.1f} {seconds:>6.1f} {growth:>9.1f}")
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
