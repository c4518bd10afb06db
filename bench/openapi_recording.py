"""What every recorded OpenAPI example needs: an app on a temporary data directory, a client
for it, waiting for a job, and :func:`record` (a response's body stored as the example of an
operation and status code), with the long-running spec and the unknown id the examples share.

Used by ``bench/openapi_examples.py`` and :mod:`bench.openapi_sweep_examples`; importing it
needs the repository root on ``sys.path`` (the script puts it there).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

__all__ = ["LONG", "UNKNOWN_ID", "app_client", "record", "settings", "wait"]

LONG = {"name": "long", "data": {"source": "synthetic", "name": "spirals", "n_samples": 400},
        "training": {"epochs": 2000, "batch_size": 8}, "monitor": {"stop_on_explosion": False}}
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"


def settings(tmp: Path, **extra: Any) -> Settings:
    return Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'examples.db'}",
                    flush_interval_seconds=0.2, progress_event_interval_seconds=0.2,
                    events_poll_seconds=0.05, **extra)


def wait(http: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def record(examples: dict[str, dict[str, Any]], operation: str, response: Any) -> Any:
    body = response.json() if response.content else None
    examples.setdefault(operation, {})[str(response.status_code)] = body
    return body


def app_client(tmp: Path, workers: int) -> TestClient:
    return TestClient(create_app(settings(tmp, workers=workers)))
