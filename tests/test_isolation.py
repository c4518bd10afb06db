"""Two tenants cannot see each other: every operation of the live OpenAPI document, called
with tenant B's key against tenant A's resources, answers exactly like a missing resource
(404, the same problem body), lists leave A's resources out, and A's resources are unharmed;
A's own key and the admin key still see them.

The table :data:`OPERATIONS` says how to call each operation. An operation of the OpenAPI
document that is not in it fails the test: a new endpoint must say how it keeps tenants
apart. Adding one is one line, e.g.::

    "getJobModel": owned("GET", "/v1/jobs/{job_id}/model"),

(path parameters are filled with tenant A's ids by name: ``job_id``, ``sweep_id``,
``webhook_id``; a new kind of resource adds its id to ``TenantResources.ids``.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import SMALL_SPEC, LiveServer, make_settings

from app.cli import create_key

pytestmark = pytest.mark.timeout(300)

ADMIN_KEY = "admin-key-for-the-isolation-test"
TINY = {**SMALL_SPEC, "training": {"epochs": 1, "batch_size": 32}}
SWEEP = {"name": "iso", "spec": {**TINY, "optimizer": {"name": "sgd", "lr": 0.1}},
         "axes": [{"path": "optimizer.lr", "values": [0.01, 0.1]},
                  {"path": "seed", "values": [0, 1]}]}
HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded", "diagnosis.final"]}
CSV = "".join(["x0,x1,label\n"] + [f"{i / 7:.3f},{(i * 3) % 5},{i % 2}\n"
                                   for i in range(40)]).encode()
UPLOAD = {"params": {"name": "iso", "task": "classification", "target": "label"},
          "headers": {"Content-Type": "text/csv"}}
ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Op:
    """How tenant B calls one operation, and what isolation means for it.

    kind: ``owned`` — on A's resource: 404 like a missing one, A's resource unharmed;
    ``list`` — 200 without any of A's ids; ``create`` — makes B's own (``check`` verifies
    it is not A's); ``admin`` — server-wide: 403 for a tenant; ``shared`` — holds no
    tenant's data (200 without A's ids); ``public`` — no key needed, no data.
    """

    kind: str
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    check: Callable[[TenantResources, httpx.Response], None] | None = None


def owned(method: str, path: str, **kw: Any) -> Op:
    return Op("owned", method, path, **kw)


def listing(path: str, **kw: Any) -> Op:
    return Op("list", "GET", path, **kw)


def _created_job_is_bs(world: TenantResources, r: httpx.Response) -> None:
    # A used Idempotency-Key "shared-key": B's request with the same key is B's own job
    assert r.status_code == 202, r.text
    assert r.json()["id"] not in world.a.all_ids and r.json()["tenant"] == "team-b"


def _created_sweep_is_bs(world: TenantResources, r: httpx.Response) -> None:
    assert r.status_code == 202, r.text
    assert r.json()["tenant"] == "team-b"
    assert not {m["job_id"] for m in r.json()["members"]} & world.a.all_ids


def _created_dataset_is_bs(world: TenantResources, r: httpx.Response) -> None:
    assert r.status_code == 201, r.text
    assert r.json()["tenant"] == "team-b" and r.json()["id"] not in world.a.all_ids


def _created_webhook_is_bs(world: TenantResources, r: httpx.Response) -> None:
    assert r.status_code == 201, r.text
    assert r.json()["tenant"] == "team-b" and r.json()["id"] not in world.a.all_ids


JOB, SWEEP_PATH, HOOK_PATH = "/v1/jobs/{job_id}", "/v1/sweeps/{sweep_id}", "/v1/webhooks/{webhook_id}"

OPERATIONS: dict[str, list[Op]] = {
    # jobs
    "createJob": [Op("create", "POST", "/v1/jobs", json=TINY,
                     headers={"Idempotency-Key": "shared-key"}, check=_created_job_is_bs)],
    "listJobs": [listing("/v1/jobs"), listing("/v1/jobs", params={"tenant": "team-a"}),
                 listing("/v1/jobs", params={"parent_id": "{job_id}"})],
    "getJob": [owned("GET", JOB)],
    "deleteJob": [owned("DELETE", JOB)],
    "cancelJob": [owned("POST", JOB + "/cancel")],
    "repairJob": [owned("POST", JOB + "/repair", json={})],
    "compareJobs": [owned("GET", JOB + "/comparison"),
                    owned("GET", "/v1/jobs/{b_job_id}/comparison",
                          params={"other": "{job_id}"})],
    "getGradientHistory": [owned("GET", JOB + "/gradients")],
    "getMetricsHistory": [owned("GET", JOB + "/metrics")],
    "getDiagnostics": [owned("GET", JOB + "/diagnostics")],
    "streamJobEvents": [owned("GET", JOB + "/events")],
    "plotGradients": [owned("GET", JOB + "/plots/gradients")],
    "plotHeatmap": [owned("GET", JOB + "/plots/heatmap")],
    "plotLoss": [owned("GET", JOB + "/plots/loss")],
    "plotComparison": [owned("GET", JOB + "/plots/comparison"),
                       owned("GET", "/v1/jobs/{b_job_id}/plots/comparison",
                             params={"other": "{job_id}"})],
    # sweeps
    "createSweep": [Op("create", "POST", "/v1/sweeps", json=SWEEP,
                       headers={"Idempotency-Key": "shared-sweep-key"},
                       check=_created_sweep_is_bs)],
    "listSweeps": [listing("/v1/sweeps"), listing("/v1/sweeps", params={"tenant": "team-a"})],
    "getSweep": [owned("GET", SWEEP_PATH)],
    "deleteSweep": [owned("DELETE", SWEEP_PATH)],
    "cancelSweep": [owned("POST", SWEEP_PATH + "/cancel")],
    "launchSweep": [owned("POST", SWEEP_PATH + "/launch", json={"member": 0})],
    "getSweepStability": [owned("GET", SWEEP_PATH + "/stability")],
    "plotSweepStability": [owned("GET", SWEEP_PATH + "/plots/stability")],
    "streamSweepEvents": [owned("GET", SWEEP_PATH + "/events")],
    # webhooks (A's subscription, and A's job's own `notify` webhook)
    "createWebhook": [Op("create", "POST", "/v1/webhooks", json=HOOK,
                         check=_created_webhook_is_bs)],
    "listWebhooks": [listing("/v1/webhooks"), listing("/v1/webhooks",
                                                      params={"tenant": "team-a"})],
    "getWebhook": [owned("GET", HOOK_PATH), owned("GET", "/v1/webhooks/{notify_job_id}"),
                   owned("GET", "/v1/webhooks/{notify_sweep_id}")],
    "deleteWebhook": [owned("DELETE", HOOK_PATH),
                      owned("DELETE", "/v1/webhooks/{notify_sweep_id}")],
    "listWebhookDeliveries": [owned("GET", HOOK_PATH + "/deliveries"),
                              owned("GET", "/v1/webhooks/{notify_sweep_id}/deliveries")],
    # data sets (A's upload), models and exports (of A's job)
    "uploadDataset": [Op("create", "POST", "/v1/datasets", content=CSV, **UPLOAD,
                         check=_created_dataset_is_bs)],
    "listDatasets": [listing("/v1/datasets")],
    "getDataset": [owned("GET", "/v1/datasets/{dataset_id}")],
    "deleteDataset": [owned("DELETE", "/v1/datasets/{dataset_id}")],
    "getJobModel": [owned("GET", JOB + "/model")],
    "predictJob": [owned("POST", JOB + "/predict", json={"X": [[0.0, 0.0]]})],
    "exportMetricsCsv": [owned("GET", JOB + "/metrics.csv")],
    "exportGradientsCsv": [owned("GET", JOB + "/gradients.csv")],
    "exportMetricsParquet": [owned("GET", JOB + "/metrics.parquet")],
    "exportGradientsParquet": [owned("GET", JOB + "/gradients.parquet")],
    # server-wide, stateless, public
    "prometheusMetrics": [Op("admin", "GET", "/metrics")],
    "preflightSpec": [Op("shared", "POST", "/v1/preflight", json=TINY)],
    "healthz": [Op("public", "GET", "/healthz")],
    "readyz": [Op("public", "GET", "/readyz")],
}


# --------------------------------------------------------------------------- the world


@dataclass
class Tenant:
    name: str
    key: str
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def all_ids(self) -> set[str]:
        return set(self.ids.values())


@dataclass
class TenantResources:
    server: LiveServer
    a: Tenant
    b: Tenant
    admin_hook: str

    def call(self, key: str, op: Op, ids: dict[str, str]) -> httpx.Response:
        def fill(text: str) -> str:
            return text.format(**ids)

        return self.server.http.request(
            op.method, fill(op.path), json=op.json, content=op.content,
            params={k: fill(v) for k, v in op.params.items()},
            headers={"Authorization": f"Bearer {key}", **op.headers})


def _cli_key(settings: Any, tenant: str) -> str:
    """A key made by the real `gradwatch keys create` (its last stdout line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    env.update(DATABASE_URL=settings.url, GRADWATCH_DATA_DIR=str(settings.data_dir),
               GRADWATCH_LOG_FORMAT="text")
    out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant", tenant,
                          "--label", "isolation test"], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("gw_") and key not in out.stderr
    return key


def _wait(server: LiveServer, key: str, path: str, done: Callable[[dict[str, Any]], bool],
          timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = server.http.get(
            path, headers={"Authorization": f"Bearer {key}"}).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantResources]:
    tmp = tmp_path_factory.mktemp("isolation")
    settings = make_settings(tmp, workers=1, api_key=ADMIN_KEY, webhook_allow_private=True,
                             max_job_runtime_seconds=60, webhook_poll_seconds=0.2)
    with LiveServer(settings) as server:
        a = Tenant("team-a", _cli_key(settings, "team-a"))
        b = Tenant("team-b", create_key(settings, "team-b").key)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        ha, hb = ({"Authorization": f"Bearer {t.key}"} for t in (a, b))
        post = server.http.post
        # subscriptions first, so that the jobs' events reach them (or must not)
        admin_hook = post("/v1/webhooks", json=HOOK, headers=admin).json()["id"]
        a.ids["webhook_id"] = post("/v1/webhooks", json=HOOK, headers=ha).json()["id"]
        b.ids["webhook_id"] = post("/v1/webhooks", json=HOOK, headers=hb).json()["id"]
        upload = post("/v1/datasets", content=CSV, headers={**ha, **UPLOAD["headers"]},
                      params=UPLOAD["params"])
        assert upload.status_code == 201 and upload.json()["tenant"] == "team-a", upload.text
        a.ids["dataset_id"] = upload.json()["id"]
        job = post("/v1/jobs", json=TINY, headers={**ha, "Idempotency-Key": "shared-key"})
        assert job.status_code == 202 and job.json()["tenant"] == "team-a", job.text
        a.ids["job_id"] = job.json()["id"]
        notify = {**TINY, "notify": {"url": "http://127.0.0.1:9/n", "events": ["job.failed"]}}
        a.ids["notify_job_id"] = post("/v1/jobs", json=notify, headers=ha).json()["id"]
        b.ids["job_id"] = post("/v1/jobs", json=TINY, headers=hb).json()["id"]
        # a sweep's own `notify` webhook (its members get none)
        notify_sweep = {"spec": notify, "axes": [{"path": "seed", "values": [0, 1]}]}
        a.ids["notify_sweep_id"] = post("/v1/sweeps", json=notify_sweep, headers=ha).json()["id"]
        for t in (a, b):
            _wait(server, t.key, f"/v1/jobs/{t.ids['job_id']}",
                  lambda j: j["status"] == "succeeded")
        repair = post(f"/v1/jobs/{a.ids['job_id']}/repair",
                      json={"spec_patch": {"optimizer": {"lr": 0.05}}}, headers=ha)
        assert repair.status_code == 202 and repair.json()["tenant"] == "team-a", repair.text
        a.ids["repair_id"] = repair.json()["id"]
        sweep = post("/v1/sweeps", json=SWEEP,
                     headers={**ha, "Idempotency-Key": "shared-sweep-key"})
        assert sweep.status_code == 202, sweep.text
        a.ids["sweep_id"] = sweep.json()["id"]
        a.ids.update({f"member_{m['index']}": m["job_id"] for m in sweep.json()["members"]})
        _wait(server, a.key, f"/v1/jobs/{a.ids['repair_id']}",
              lambda j: j["status"] == "succeeded")
        _wait(server, a.key, f"/v1/sweeps/{a.ids['sweep_id']}",
              lambda s: s["status"] == "succeeded")
        _wait(server, a.key, f"/v1/jobs/{a.ids['notify_job_id']}",
              lambda j: j["status"] == "succeeded")
        _wait(server, a.key, f"/v1/sweeps/{a.ids['notify_sweep_id']}",
              lambda s: s["status"] == "succeeded")
        yield TenantResources(server, a, b, admin_hook)


# --------------------------------------------------------------------------- the tests


def _normalised(r: httpx.Response) -> Any:
    return ID_RE.sub("<id>", r.text)


def test_every_operation_of_the_openapi_document_is_in_the_table(world: TenantResources) -> None:
    operations = {op["operationId"] for item in world.server.app.openapi()["paths"].values()
                  for op in item.values() if isinstance(op, dict)}
    missing = sorted(operations - set(OPERATIONS))
    assert not missing, (f"say in tests/test_isolation.py OPERATIONS how these operations keep "
                         f"tenants apart: {missing}")
    assert not set(OPERATIONS) - operations, "the table names operations that no longer exist"


@pytest.fixture(scope="module")
def b_tried_everything(world: TenantResources) -> TenantResources:
    """Tenant B calls every operation against A's resources (once, before A and the admin
    look at them again)."""
    a, b = world.a, world.b
    a_ids = {**a.ids, "b_job_id": b.ids["job_id"]}
    ghost = {name: str(uuid.uuid4()) for name in a.ids} | {"b_job_id": b.ids["job_id"]}
    for operation_id, calls in OPERATIONS.items():
        for op in calls:
            r = world.call(b.key, op, a_ids)
            where = f"{operation_id} {op.method} {op.path} {op.params}"
            if op.kind == "owned":
                assert r.status_code == 404, (where, r.status_code, r.text[:300])
                assert r.headers["content-type"].startswith("application/problem+json"), where
                # exactly the answer for a resource that does not exist
                missing = world.call(b.key, op, ghost)
                assert missing.status_code == 404, where
                assert _normalised(r) == _normalised(missing), where
            elif op.kind in ("list", "shared"):
                assert r.status_code == 200, (where, r.text[:300])
                leaked = a.all_ids & set(ID_RE.findall(r.text))
                assert not leaked, (where, leaked)
            elif op.kind == "create":
                assert op.check is not None
                op.check(world, r)
            elif op.kind == "admin":
                assert r.status_code == 403, (where, r.text[:300])
            else:
                assert op.kind == "public" and r.status_code == 200, where
    return world


def test_another_tenant_gets_404_for_everything_of_a_tenant(
        b_tried_everything: TenantResources) -> None:
    """(The assertions are in the fixture, which every other test here also runs first.)"""


def test_a_tenant_and_the_admin_still_see_everything_of_the_tenant(
        b_tried_everything: TenantResources) -> None:
    world = b_tried_everything
    a, b, http = world.a, world.b, world.server.http
    ha = {"Authorization": f"Bearer {a.key}"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for path in (f"/v1/jobs/{a.ids['job_id']}", f"/v1/jobs/{a.ids['job_id']}/gradients",
                 f"/v1/jobs/{a.ids['job_id']}/comparison", f"/v1/jobs/{a.ids['job_id']}/events",
                 f"/v1/jobs/{a.ids['job_id']}/plots/loss", f"/v1/sweeps/{a.ids['sweep_id']}",
                 f"/v1/sweeps/{a.ids['sweep_id']}/stability",
                 f"/v1/webhooks/{a.ids['webhook_id']}",
                 f"/v1/webhooks/{a.ids['webhook_id']}/deliveries",
                 f"/v1/webhooks/{a.ids['notify_sweep_id']}",
                 f"/v1/webhooks/{a.ids['notify_sweep_id']}/deliveries",
                 f"/v1/datasets/{a.ids['dataset_id']}", f"/v1/jobs/{a.ids['job_id']}/model",
                 f"/v1/jobs/{a.ids['job_id']}/metrics.csv"):
        for headers in (ha, admin):
            r = http.get(path, headers=headers)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
    job = http.get(f"/v1/jobs/{a.ids['job_id']}", headers=ha).json()
    assert job["status"] == "succeeded" and not job["cancel_requested"]  # B changed nothing
    own = {j["id"] for j in http.get("/v1/jobs", params={"limit": 200}, headers=ha).json()["items"]}
    assert {a.ids["job_id"], a.ids["repair_id"], a.ids["member_0"]} <= own
    assert b.ids["job_id"] not in own
    everyone = {j["id"] for j in http.get("/v1/jobs", params={"limit": 200},
                                          headers=admin).json()["items"]}
    assert {a.ids["job_id"], b.ids["job_id"]} <= everyone
    only_a = http.get("/v1/jobs", params={"limit": 200, "tenant": "team-a"}, headers=admin).json()
    assert {j["tenant"] for j in only_a["items"]} == {"team-a"}
    hooks = {h["id"] for h in http.get("/v1/webhooks", headers=admin).json()}
    assert {a.ids["webhook_id"], b.ids["webhook_id"], world.admin_hook} <= hooks


def _delivered_jobs(world: TenantResources, key: str, webhook_id: str) -> set[str]:
    page = world.server.http.get(f"/v1/webhooks/{webhook_id}/deliveries",
                                 params={"limit": 200},
                                 headers={"Authorization": f"Bearer {key}"}).json()
    return {d["job_id"] for d in page["items"]}


def test_a_tenants_webhooks_get_only_that_tenants_job_events(
        b_tried_everything: TenantResources) -> None:
    world = b_tried_everything
    a, b = world.a, world.b
    to_a = _delivered_jobs(world, a.key, a.ids["webhook_id"])
    to_b = _delivered_jobs(world, b.key, b.ids["webhook_id"])
    to_admin = _delivered_jobs(world, ADMIN_KEY, world.admin_hook)
    assert a.ids["job_id"] in to_a and b.ids["job_id"] not in to_a
    assert b.ids["job_id"] in to_b and not to_b & a.all_ids
    assert {a.ids["job_id"], b.ids["job_id"]} <= to_admin


def test_repairs_and_sweep_members_belong_to_the_parents_tenant(
        b_tried_everything: TenantResources) -> None:
    world = b_tried_everything
    a = world.a
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for name in ("repair_id", "member_0", "member_3", "notify_job_id"):
        job = world.server.http.get(f"/v1/jobs/{a.ids[name]}", headers=admin).json()
        assert job["tenant"] == "team-a", name
    # the admin repairing a tenant's job makes the tenant's job, not the admin's
    r = world.server.http.post(f"/v1/jobs/{a.ids['job_id']}/repair",
                               json={"spec_patch": {"seed": 7}}, headers=admin)
    assert r.status_code == 202 and r.json()["tenant"] == "team-a", r.text
    assert world.server.http.get(f"/v1/jobs/{r.json()['id']}",
                                 headers={"Authorization": f"Bearer {a.key}"}).status_code == 200
    notify_hook = world.server.http.get(f"/v1/webhooks/{a.ids['notify_job_id']}",
                                        headers={"Authorization": f"Bearer {a.key}"})
    assert notify_hook.status_code == 200 and notify_hook.json()["tenant"] == "team-a"
    sweep_hook = world.server.http.get(f"/v1/webhooks/{a.ids['notify_sweep_id']}",
                                       headers={"Authorization": f"Bearer {a.key}"})
    assert sweep_hook.status_code == 200 and sweep_hook.json()["tenant"] == "team-a"
    assert sweep_hook.json()["sweep_id"] == a.ids["notify_sweep_id"]


def test_a_spec_cannot_name_another_tenants_data_set(b_tried_everything: TenantResources) -> None:
    """B's job on A's upload is refused exactly like one on a data set that does not exist."""
    world = b_tried_everything
    hb = {"Authorization": f"Bearer {world.b.key}"}

    def submit(dataset_id: str) -> httpx.Response:
        spec = {**TINY, "data": {"source": "uploaded", "id": dataset_id}}
        return world.server.http.post("/v1/jobs", json=spec, headers=hb)

    theirs, ghost = submit(world.a.ids["dataset_id"]), submit(str(uuid.uuid4()))
    assert theirs.status_code == 422 and ghost.status_code == 422, theirs.text
    assert _normalised(theirs) == _normalised(ghost)
