"""Regenerate app/openapi_examples.json (the response examples Swagger UI and ReDoc show)
and docs/images/exploding-gradients.png (the README's plot). Also sweeps, webhooks and the
metrics text.

Every example is a real response of a real run (not hand-written): a diverging job that
reaches Infinity, its diagnosis, its repair and the comparison, the job's event stream, and
real errors (422 with field paths, 404, 409, 401, 413, 415). Run after changing a response
model or the diagnosis:

    .venv/bin/python bench/openapi_examples.py
    .venv/bin/python bench/openapi_examples.py --only getSweepStability  # one operation's

`--only OP` (repeatable) re-records just what operation OP needs and keeps every other example
(no README plot): `getJobModel`, `predictJob` and the `export*` operations (recorded together),
`listSweeps`, `getSweep`, `getSweepStability`, `launchSweep`, `createSweep` (its 202 and 200 replay), and `'*'` (the
auth-throttled 429 shown for operations without one of their own).

The shared recording helpers live in ``bench/openapi_recording.py`` and the sweep examples
(with their ``--only`` refreshers) in ``bench/openapi_sweep_examples.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.routers.examples import EXPLODING_SPEC  # noqa: E402
from app.showcase import DIVERGING_SPEC  # noqa: E402
from bench.openapi_recording import (  # noqa: E402
    LONG,
    UNKNOWN_ID,
    app_client,
    record,
    settings,
    wait,
)
from bench.openapi_sweep_examples import (  # noqa: E402
    SWEEP,
    refresh_get_sweep,
    refresh_launch,
    refresh_stability,
    refresh_sweep_create,
    refresh_sweep_list,
    sweeps_and_webhooks,
)

OUT = ROOT / "app" / "openapi_examples.json"
README_PLOT = ROOT / "docs" / "images" / "exploding-gradients.png"
INVALID = {"data": {"source": "synthetic", "name": "spirals"},
           "optimizer": {"name": "sgd", "lr": -1.0}, "training": {"epochs": 0}}


def event_stream(http: TestClient, job_id: str, keep: int = 6) -> str:
    """The job's stream replayed from the start (Last-Event-ID: 0), shortened to ``keep``
    events and the terminal one."""
    with http.stream("GET", f"/v1/jobs/{job_id}/events",
                     headers={"Last-Event-ID": "0"}) as response:
        text = "".join(response.iter_text())
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()
              and not b.startswith(":")]
    if len(blocks) > keep + 1:
        blocks = [*blocks[:keep], *blocks[-1:]]
    return "\n\n".join(blocks) + "\n\n"


# nothing listens on port 9 (discard) here: the deliveries show failed attempts
HOOK = {"url": "http://127.0.0.1:9/gradwatch", "events": ["job.succeeded", "job.failed"],
        "description": "example receiver"}


def datasets(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    """Real responses of the data set endpoints (a tenant with a small quota for the 429)."""
    from app.deps import require_api_key
    from app.tenancy import Principal

    rows = "".join(f"{i / 10:.1f},{(i * 7) % 5},{i % 3}\n" for i in range(60))
    csv = ("sepal,petal,species\n" + rows).encode()
    with TestClient(create_app(settings(tmp, workers=0, max_upload_bytes=64 * 1024,
                                        tenant_max_upload_bytes=3000))) as http:
        params = {"task": "classification", "target": "species", "name": "flowers"}
        ds = record(ex, "uploadDataset", http.post("/v1/datasets", params=params, content=csv,
                                                   headers={"Content-Type": "text/csv"}))
        record(ex, "uploadDataset", http.post("/v1/datasets", params=params,
                                              content=b"sepal,petal,species\n1,,0\n",
                                              headers={"Content-Type": "text/csv"}))
        record(ex, "uploadDataset", http.post("/v1/datasets", params=params,
                                              content=csv * 200,
                                              headers={"Content-Type": "text/csv"}))
        record(ex, "uploadDataset", http.post("/v1/datasets", params=params, content=b"{}",
                                              headers={"Content-Type": "application/json"}))
        record(ex, "getDataset", http.get(f"/v1/datasets/{ds['id']}"))
        record(ex, "getDataset", http.get(f"/v1/datasets/{UNKNOWN_ID}"))
        listing = record(ex, "listDatasets", http.get("/v1/datasets"))
        listing["datasets"] = [*listing["datasets"][:2], listing["datasets"][-1]]
        job = http.post("/v1/jobs", json={"data": {"source": "uploaded", "id": ds["id"]}}).json()
        record(ex, "deleteDataset", http.delete(f"/v1/datasets/{ds['id']}"))  # 409: queued job
        http.post(f"/v1/jobs/{job['id']}/cancel")
        record(ex, "deleteDataset", http.delete(f"/v1/datasets/{UNKNOWN_ID}"))
        http.app.dependency_overrides[require_api_key] = lambda: Principal("acme")  # type: ignore[attr-defined]
        http.post("/v1/datasets", params=params, content=csv, headers={"Content-Type": "text/csv"})
        record(ex, "uploadDataset", http.post("/v1/datasets", params=params, content=csv,
                                              headers={"Content-Type": "text/csv"}))  # 429


CLASSIFIER = {"name": "spirals-standardised",
              "data": {"source": "synthetic", "name": "spirals", "n_samples": 300,
                       "standardize": True},
              "model": {"hidden": [{"units": 16}, {"units": 16}]},
              "optimizer": {"name": "adam", "lr": 0.01},
              "training": {"epochs": 5, "batch_size": 32, "validation_split": 0.2}}


def shortened_csv(text: str, head: int = 3, tail: int = 2) -> str:
    lines = text.splitlines()
    return "\n".join([*lines[:1 + head], *lines[-tail:]]) + "\n"


def models_and_exports(http: TestClient, ex: dict[str, dict[str, Any]]) -> None:
    """Model download and predictions (a trained classifier; the diverging run's non-finite
    weights: 409), the CSV exports of the diverging run (its last rows hold inf and nan)."""
    import io

    import numpy as np

    from app.exports import CSV_COLUMNS

    good = http.post("/v1/jobs", json=CLASSIFIER).json()
    bad = http.post("/v1/jobs", json=DIVERGING_SPEC).json()
    wait(http, good["id"])
    wait(http, bad["id"])
    model = http.get(f"/v1/jobs/{good['id']}/model")
    with np.load(io.BytesIO(model.content)) as npz:
        ex["getJobModel"] = {"200": f"(binary NumPy .npz, {len(model.content)} bytes: "
                                    f"{', '.join(npz.files)})"}
    record(ex, "getJobModel", http.get(f"/v1/jobs/{bad['id']}/model"))
    record(ex, "getJobModel", http.get(f"/v1/jobs/{good['id']}/model", params={"which": "x"}))
    record(ex, "getJobModel", http.get(f"/v1/jobs/{UNKNOWN_ID}/model"))
    record(ex, "predictJob", http.post(f"/v1/jobs/{good['id']}/predict",
                                       json={"X": [[0.1, -0.4], [0.7, 0.2]]}))
    record(ex, "predictJob", http.post(f"/v1/jobs/{good['id']}/predict",
                                       json={"X": [[0.1, -0.4, 2.0]]}))
    record(ex, "predictJob", http.post(f"/v1/jobs/{bad['id']}/predict", json={"X": [[0.0] * 8]}))
    record(ex, "predictJob", http.post(f"/v1/jobs/{UNKNOWN_ID}/predict", json={"X": [[0.0]]}))
    for operation, table in (("exportMetricsCsv", "metrics"), ("exportGradientsCsv", "gradients")):
        text = http.get(f"/v1/jobs/{bad['id']}/{table}.csv").text
        ex[operation] = {"200": shortened_csv(text, tail=2 if table == "metrics" else 3)}
        record(ex, operation, http.get(f"/v1/jobs/{UNKNOWN_ID}/{table}.csv"))
    for operation, table in (("exportMetricsParquet", "metrics"),
                             ("exportGradientsParquet", "gradients")):
        columns = ", ".join(CSV_COLUMNS[table])  # type: ignore[index]
        ex[operation] = {"200": "(binary Parquet file, zstd, one row group per window of "
                                f"stored steps: {columns})"}
        record(ex, operation, http.get(f"/v1/jobs/{UNKNOWN_ID}/{table}.parquet"))


def generate(tmp: Path) -> dict[str, dict[str, Any]]:
    ex: dict[str, dict[str, Any]] = {}
    with TestClient(create_app(settings(tmp, workers=1, webhook_allow_private=True))) as http:
        hook = record(ex, "createWebhook", http.post("/v1/webhooks", json=HOOK))
        record(ex, "createWebhook", http.post("/v1/webhooks", json={**HOOK, "url": "ftp://x"}))
        job = record(ex, "createJob", http.post("/v1/jobs", json=DIVERGING_SPEC,
                                                headers={"Idempotency-Key": "example-1"}))
        wait(http, job["id"])
        record(ex, "createJob", http.post("/v1/jobs", json=DIVERGING_SPEC,
                                          headers={"Idempotency-Key": "example-1"}))
        record(ex, "createJob", http.post("/v1/jobs", json=INVALID))
        record(ex, "createJob", http.post("/v1/jobs", content=b"spec", headers={
            "Content-Type": "text/plain"}))
        record(ex, "getJob", http.get(f"/v1/jobs/{job['id']}"))
        record(ex, "getJob", http.get("/v1/jobs/00000000-0000-0000-0000-000000000000"))
        record(ex, "getGradientHistory", http.get(f"/v1/jobs/{job['id']}/gradients",
                                                  params={"max_points": 10}))
        record(ex, "getGradientHistory", http.get(f"/v1/jobs/{job['id']}/gradients",
                                                  params={"max_points": 5}))
        record(ex, "getMetricsHistory", http.get(f"/v1/jobs/{job['id']}/metrics",
                                                 params={"max_points": 10}))
        record(ex, "getDiagnostics", http.get(f"/v1/jobs/{job['id']}/diagnostics"))
        README_PLOT.parent.mkdir(parents=True, exist_ok=True)
        README_PLOT.write_bytes(http.get(f"/v1/jobs/{job['id']}/plots/gradients").content)
        ex["streamJobEvents"] = {"200": event_stream(http, job["id"])}
        repair = record(ex, "repairJob", http.post(f"/v1/jobs/{job['id']}/repair", json={},
                                                   headers={"Idempotency-Key": "example-2"}))
        record(ex, "repairJob", http.post(f"/v1/jobs/{job['id']}/repair", json={},
                                          headers={"Idempotency-Key": "example-2"}))
        record(ex, "repairJob", http.post(f"/v1/jobs/{job['id']}/repair",
                                          json={"recommendation": 99}))
        wait(http, repair["id"])
        record(ex, "compareJobs", http.get(f"/v1/jobs/{job['id']}/comparison"))
        record(ex, "listJobs", http.get("/v1/jobs", params={"limit": 2}))
        long = http.post("/v1/jobs", json=LONG).json()
        record(ex, "deleteJob", http.delete(f"/v1/jobs/{long['id']}"))
        record(ex, "cancelJob", http.post(f"/v1/jobs/{long['id']}/cancel"))
        wait(http, long["id"])
        record(ex, "cancelJob", http.post(f"/v1/jobs/{long['id']}/cancel"))
        record(ex, "cancelJob", http.post("/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"))
        unknown = "/v1/jobs/00000000-0000-0000-0000-000000000000"
        for operation, method, suffix in [
                ("plotGradients", "GET", "/plots/gradients"), ("plotHeatmap", "GET", "/plots/heatmap"),
                ("plotLoss", "GET", "/plots/loss"), ("plotComparison", "GET", "/plots/comparison"),
                ("getDiagnostics", "GET", "/diagnostics"), ("getGradientHistory", "GET", "/gradients"),
                ("getMetricsHistory", "GET", "/metrics"), ("compareJobs", "GET", "/comparison"),
                ("streamJobEvents", "GET", "/events"), ("repairJob", "POST", "/repair"),
                ("deleteJob", "DELETE", "")]:
            record(ex, operation, http.request(method, unknown + suffix))
        record(ex, "preflightSpec", http.post("/v1/preflight", json=EXPLODING_SPEC))
        record(ex, "preflightSpec", http.post("/v1/preflight", json=INVALID))
        record(ex, "healthz", http.get("/healthz"))
        record(ex, "readyz", http.get("/readyz"))
        ex["deleteJob"].pop("204", None)
        record(ex, "deleteJob", http.delete(f"/v1/jobs/{repair['id']}"))  # 204: no body
        ex["deleteJob"].pop("204", None)
        sweeps_and_webhooks(http, ex, hook["id"])
        models_and_exports(http, ex)
    uploads = tmp / "uploads"
    uploads.mkdir()
    datasets(uploads, ex)
    keyed = tmp / "keyed"
    keyed.mkdir()
    with TestClient(create_app(settings(keyed, workers=1, api_key="example-key",
                                        max_body_bytes=1024))) as http:
        record(ex, "listJobs", http.get("/v1/jobs"))
        http.app.state.executor.shutdown(wait=True)  # type: ignore[attr-defined]
        record(ex, "readyz", http.get("/readyz"))  # 503: the executor is not running
        record(ex, "createJob", http.post("/v1/jobs", content=b"{" + b" " * 4000 + b"}",
                                          headers={"X-API-Key": "example-key",
                                                   "Content-Type": "application/json"}))
    tenant_examples(tmp, ex)
    auth_throttle_examples(tmp, ex)
    return ex


def auth_throttle_examples(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    """The 429 any keyed operation answers an address past its failed authentications (the
    example of every operation without a 429 of its own)."""
    home = tmp / "throttle"
    home.mkdir()
    config = settings(home, workers=0, api_key="example-key", auth_max_address_failures=2)
    with TestClient(create_app(config)) as http:
        for _ in range(2):
            http.get("/v1/jobs", headers={"X-API-Key": "a-wrong-key"})
        record(ex, "*", http.get("/v1/jobs", headers={"X-API-Key": "a-wrong-key"}))


def tenant_examples(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    """A tenant's key past its queued-jobs quota (429) and on a server-wide endpoint (403)."""
    from app.cli import create_key

    home = tmp / "tenants"
    home.mkdir()
    config = settings(home, workers=0, api_key="example-key", tenant_max_queued_jobs=1)
    with TestClient(create_app(config)) as http:
        key = {"X-API-Key": create_key(config, "team-vision").key}
        job = http.post("/v1/jobs", json=DIVERGING_SPEC, headers=key).json()
        record(ex, "createJob", http.post("/v1/jobs", json=DIVERGING_SPEC, headers=key))
        record(ex, "repairJob", http.post(f"/v1/jobs/{job['id']}/repair", headers=key,
                                          json={"spec_patch": {"optimizer": {"lr": 0.01}}}))
        record(ex, "createSweep", http.post("/v1/sweeps", json=SWEEP, headers=key))
        record(ex, "prometheusMetrics", http.get("/metrics", headers=key))


def refresh_models(tmp: Path, ex: dict[str, dict[str, Any]]) -> None:
    with app_client(tmp, workers=1) as http:
        models_and_exports(http, ex)


Refresh = Callable[[Path, dict[str, dict[str, Any]]], None]
#: operation id -> what re-records its examples (``--only``); "*": the auth-throttled 429
ONLY: dict[str, Refresh] = {
    **dict.fromkeys(("getJobModel", "predictJob", "exportMetricsCsv", "exportGradientsCsv",
                     "exportMetricsParquet", "exportGradientsParquet"), refresh_models),
    "listSweeps": refresh_sweep_list,
    "getSweep": refresh_get_sweep,
    "getSweepStability": refresh_stability,
    "launchSweep": refresh_launch,
    "createSweep": refresh_sweep_create,
    "*": auth_throttle_examples,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(ONLY), metavar="OP",
                        help="re-record only this operation's examples (repeatable): "
                             + ", ".join(sorted(ONLY)))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only:
            examples = json.loads(OUT.read_text())
            for i, refresh in enumerate(dict.fromkeys(ONLY[op] for op in args.only)):
                home = Path(tmp) / str(i)
                home.mkdir()
                refresh(home, examples)
        else:
            examples = generate(Path(tmp))
    OUT.write_text(json.dumps(examples, indent=1, sort_keys=True) + "\n")
    counts = {op: sorted(codes) for op, codes in sorted(examples.items())}
    print(f"wrote {OUT.relative_to(ROOT)}: {json.dumps(counts)}")
    if not args.only:
        print(f"wrote {README_PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
