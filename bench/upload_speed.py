"""Data set upload throughput: CSV (parsed while streaming) and .npz, through the HTTP API.

    .venv/bin/python bench/upload_speed.py [--rows 200000] [--columns 10] [--repeats 3]

A real server (uvicorn, in this process's thread) receives the body in chunks, as from a
network; each upload is timed end to end (request sent -> 201 with the stored data set) and
the medians are printed with MB/s and rows/s, plus the server process's peak memory growth.
CSV is measured twice in the same run: as served (NumPy's C reader for plain numeric blocks) and
with every line read by the exact line-by-line reader (what any unusual block falls back to).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from app.main import create_app
from app.settings import Settings
from app.uploads import CsvPart

FAST = CsvPart._fast


def _serve(tmp: Path) -> tuple[uvicorn.Server, str]:
    settings = Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'bench.db'}", workers=0,
                        max_upload_bytes=2 * 1024**3)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _chunks(body: bytes, size: int = 64 * 1024) -> object:
    for i in range(0, len(body), size):
        yield body[i:i + size]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, args.columns))
    y = rng.integers(0, 5, size=args.rows)
    text = io.StringIO()
    np.savetxt(text, np.column_stack([X, y]), delimiter=",", fmt="%.17g",
               header=",".join([*(f"x{i}" for i in range(args.columns)), "label"]), comments="")
    csv = text.getvalue().encode()
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y)
    npz = buf.getvalue()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.rows} rows x {args.columns} inputs; "
          f"CSV {len(csv) / 1e6:.1f} MB, npz {len(npz) / 1e6:.1f} MB; {args.repeats} repeats")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:
        server, url = _serve(Path(tmp))
        with httpx.Client(base_url=url, timeout=600) as http:
            for fmt, body, content_type in (("csv", csv, "text/csv"),
                                            ("csv line by line", csv, "text/csv"),
                                            ("npz", npz, "application/x-npz")):
                times = []
                CsvPart._fast = FAST if fmt != "csv line by line" else (  # type: ignore[method-assign]
                    lambda self, lines: False)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    r = http.post("/v1/datasets", params={"task": "classification"},
                                  content=_chunks(body), headers={"Content-Type": content_type})
                    times.append(time.perf_counter() - start)
                    assert r.status_code == 201, r.text
                    http.delete(f"/v1/datasets/{r.json()['id']}")
                t = statistics.median(times)
                print(f"{fmt}: median {t:.2f} s = {len(body) / 1e6 / t:.1f} MB/s, "
                      f"{args.rows / t:,.0f} rows/s")
        server.should_exit = True
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"peak RSS growth (client bodies + server, one process): {grown / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
