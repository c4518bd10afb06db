"""Everything the dashboard reads, read by several clients at once while a job trains and
its repair runs: never a 5xx. (A thread-unsafe zstd codec once turned some concurrent history
reads into 500s; that race is pinned deterministically by tests/test_storage.py's thread test,
this one guards the whole read surface under concurrency.)"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
from conftest import LONG_SPEC, LiveServer

from app.showcase import DIVERGING_SPEC

READERS, SECONDS = 4, 8.0


def _paths(job_id: str) -> list[str]:
    base = f"/v1/jobs/{job_id}"
    return [base, f"{base}/gradients?metrics=grad_norm&max_points=1000",
            f"{base}/metrics?metrics=grad_norm,loss&max_points=1000",
            f"{base}/gradients?max_points=2147483648", f"{base}/diagnostics",
            f"{base}/plots/gradients", f"{base}/metrics.csv", f"{base}/gradients.parquet",
            f"{base}/model", f"{base}/comparison"]


def test_concurrent_reads_of_running_jobs_never_answer_5xx(live: LiveServer) -> None:
    parent = live.http.post("/v1/jobs", json=DIVERGING_SPEC).json()["id"]
    live.wait_for(parent, {"succeeded"}, timeout=120)
    running = live.http.post("/v1/jobs", json={
        **LONG_SPEC, "training": {**LONG_SPEC["training"], "epochs": 60}}).json()["id"]
    child = live.http.post(f"/v1/jobs/{parent}/repair", json={"recommendation": 0}).json()["id"]
    live.wait_for(running, {"running"}, timeout=60)
    paths = [*_paths(running), *_paths(child), *_paths(parent)]
    failures: Counter[tuple[str, int]] = Counter()
    answered = Counter[int]()
    stop = time.monotonic() + SECONDS

    def read(k: int) -> None:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            i = k
            while time.monotonic() < stop:
                path = paths[i % len(paths)]
                i += READERS + 3
                status = http.get(path).status_code
                answered[status] += 1
                if status >= 500:
                    failures[(path, status)] += 1

    threads = [threading.Thread(target=read, args=(k,)) for k in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, dict(failures)
    assert answered[200] > 50, dict(answered)  # the readers did read (404/409: no model yet)
    assert live.http.get(f"/v1/jobs/{running}").json()["status"] in {"running", "succeeded"}
    live.http.post(f"/v1/jobs/{running}/cancel")
