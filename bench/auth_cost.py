"""What authentication costs per request (not a test). Prints the figures; see bench/README.md.

    python bench/auth_cost.py [--requests 400]

(i)  the key check alone: the admin key (hmac.compare_digest), a tenant key verified from
     scratch (primary-key look-up + scrypt), a tenant key remembered by the KeyVerifier
(ii) GET /v1/jobs/{id} through the whole app (TestClient, SQLite, one job) with the admin
     key and with a tenant key (remembered; its job), interleaved: medians and their ratio
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from app.cli import create_key  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402

SPEC = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 120}}


def _median_us(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        base = {"database_url": f"sqlite:///{tmp}/a.db", "data_dir": Path(tmp), "workers": 0}
        keyed = Settings(**base, api_key="the-admin-key-0123456789")
        with TestClient(create_app(keyed)) as client:
            tenant = create_key(keyed, "team-a").key
            verifier = client.app.state.keys
            job = client.post("/v1/jobs", json=SPEC, headers={"X-API-Key": tenant}).json()["id"]

            import hmac
            admin = _median_us(lambda: hmac.compare_digest(b"the-admin-key-0123456789",
                                                           b"the-admin-key-0123456789"), 2000)

            def fresh() -> None:
                verifier.forget()
                assert verifier.tenant_for(tenant) == "team-a"

            scratch = _median_us(fresh, 30)
            verifier.tenant_for(tenant)
            cached = _median_us(lambda: verifier.tenant_for(tenant), 2000)
            print("(i) the key check alone (median)")
            print(f"    admin key compare_digest      {admin:10.1f} us")
            print(f"    tenant key, from scratch      {scratch:10.1f} us  (look-up + scrypt)")
            print(f"    tenant key, remembered        {cached:10.1f} us  (SHA-256 + dict)")

            runs: dict[str, list[float]] = {"admin": [], "tenant": []}
            calls = {
                "admin": lambda: client.get(f"/v1/jobs/{job}", headers={
                    "X-API-Key": "the-admin-key-0123456789"}),
                "tenant": lambda: client.get(f"/v1/jobs/{job}", headers={"X-API-Key": tenant}),
            }
            for _ in range(20):  # warm up
                for call in calls.values():
                    call()
            for _ in range(args.requests):  # interleaved
                for name, call in calls.items():
                    t0 = time.perf_counter()
                    assert call().status_code == 200
                    runs[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in runs.items()}
            print(f"(ii) GET /v1/jobs/{{id}}, {args.requests} interleaved requests each (median)")
            for name in runs:
                print(f"    {name:<7} {med[name]:7.3f} ms")
            print(f"    tenant / admin: {med['tenant'] / med['admin']:.3f}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
