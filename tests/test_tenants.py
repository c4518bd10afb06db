"""Tenant keys (created, stored hashed, verified, revoked), the auth modes, the docs setting
and the per-tenant quotas (429 + Retry-After; workers never run more than the running quota)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LONG_SPEC, SMALL_SPEC, LiveServer, make_settings
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from app.cli import create_key
from app.db import build_engine, build_sessionmaker
from app.keys import (
    KeyVerifier,
    TenantNameError,
    hash_secret,
    parse_key,
    revoke_key,
    validate_tenant,
    verify_secret,
)
from app.migrate import upgrade
from app.models import Job, Sweep
from app.settings import Settings

PROBLEM = "application/problem+json"


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    env.update(DATABASE_URL=settings.url, GRADWATCH_DATA_DIR=str(settings.data_dir),
               GRADWATCH_LOG_FORMAT="text", **extra)
    return env


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, env=_env(settings, **env), timeout=60)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --------------------------------------------------------------------------- keys


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    upgrade(settings.url)
    made = _cli(settings, "keys", "create", "--tenant", "team-a", "--label", "alice's laptop")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    key_id, secret = parse_key(key) or ("", "")
    assert key_id and key_id in made.stderr and key not in made.stderr
    database = (tmp_path / "gradwatch.db").read_bytes()
    assert key.encode() not in database and secret.encode() not in database
    listed = _cli(settings, "keys", "list")
    assert listed.returncode == 0 and key_id in listed.stdout and "team-a" in listed.stdout
    assert secret not in listed.stdout and "scrypt" not in listed.stdout
    as_json = _cli(settings, "keys", "list", "--json", "--tenant", "team-a")
    assert f'"key_id": "{key_id}"' in as_json.stdout and secret not in as_json.stdout
    revoked = _cli(settings, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert _cli(settings, "keys", "revoke", "000000000000").returncode == 1
    again = _cli(settings, "keys", "list", "--json")
    assert '"revoked_at": null' not in again.stdout


@pytest.mark.parametrize("name", ["", "Team", "team_a", "-team", "team-", "a" * 41, "a b",
                                  "../x", "team\x00"])
def test_tenant_names_are_short_slugs(name: str) -> None:
    with pytest.raises(TenantNameError, match="not valid"):
        validate_tenant(name)


def test_keys_create_refuses_a_bad_tenant_name_and_an_unmigrated_database(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    fresh = _cli(settings, "keys", "create", "--tenant", "team-a")
    assert fresh.returncode != 0 and "gradwatch migrate" in fresh.stderr and not fresh.stdout
    upgrade(settings.url)
    bad = _cli(settings, "keys", "create", "--tenant", "Team A")
    assert bad.returncode == 2 and "not valid" in bad.stderr and not bad.stdout
    for good in ("a", "team-a", "x" * 40, "42"):
        assert validate_tenant(good) == good


def test_a_secret_verifies_against_its_own_hash_only() -> None:
    stored = hash_secret("s3cret", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$") and "s3cret" not in stored
    assert verify_secret("s3cret", stored)
    assert not verify_secret("s3cret!", stored)
    assert not verify_secret("s3cret", hash_secret("s3cret", n=2**10).replace("$8$", "$4$"))
    assert not verify_secret("s3cret", "bcrypt$whatever")
    assert not verify_secret("s3cret", "scrypt$x$8$1$AA==$AA==")
    assert hash_secret("s3cret", n=2**10) != stored  # a fresh salt every time


def test_only_well_formed_keys_are_looked_up() -> None:
    key = "gw_0123456789ab_" + "A" * 43
    assert parse_key(key) == ("0123456789ab", "A" * 43)
    for other in (key + "x", key.replace("gw_", "gx_"), key.upper(), "admin-key", ""):
        assert parse_key(other) is None


def test_the_verifier_remembers_outcomes_for_its_ttl_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    upgrade(settings.url)
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    try:
        verifier = KeyVerifier(factory, ttl=0.3)
        assert not verifier.tenant_keys_exist()
        new = create_key(settings, "team-a")
        assert verifier.tenant_keys_exist() is False  # the "no keys" answer is remembered...
        time.sleep(0.35)
        assert verifier.tenant_keys_exist()  # ...for the ttl only
        assert verifier.tenant_for(new.key) == "team-a"
        assert verifier.tenant_for(new.key[:-1] + ("A" if new.key[-1] != "A" else "B")) is None
        with factory() as session:
            revoke_key(session, new.key_id)
            session.commit()
        assert verifier.tenant_for(new.key) == "team-a"  # still within the ttl
        time.sleep(0.35)
        assert verifier.tenant_for(new.key) is None  # the revoke took effect within the ttl
        assert verifier.tenant_keys_exist()  # a revoked key still closes the server
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- auth modes


def test_auth_modes(make_client: Callable[..., TestClient]) -> None:
    open_server = make_client(key_cache_seconds=0)
    assert open_server.get("/v1/jobs").status_code == 200  # the embedded default: no keys
    assert open_server.get("/v1/jobs", headers=_bearer("anything")).status_code == 200
    bogus_tenant_key = "gw_0123456789ab_" + "A" * 43
    assert open_server.get("/v1/jobs", headers=_bearer(bogus_tenant_key)).status_code == 401
    assert "securitySchemes" not in open_server.get("/openapi.json").json()["components"]

    new = create_key(open_server.app.state.settings, "team-a")
    # the first tenant key closes the server, even without GRADWATCH_API_KEY
    r = open_server.get("/v1/jobs")
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert open_server.get("/v1/jobs", headers=_bearer("anything")).status_code == 401
    assert open_server.get("/v1/jobs", headers=_bearer(new.key)).status_code == 200
    assert open_server.get("/v1/jobs", headers={"X-API-Key": new.key}).status_code == 200
    assert open_server.get("/healthz").status_code == 200
    doc = open_server.get("/openapi.json").json()  # now it documents the keys
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert "tenant key" in doc["components"]["securitySchemes"]["HTTPBearer"]["description"]

    admin = make_client(api_key="the-admin-key", key_cache_seconds=0)
    tenant = create_key(admin.app.state.settings, "team-b")
    job = admin.post("/v1/jobs", json=SMALL_SPEC, headers=_bearer(tenant.key)).json()
    assert job["tenant"] == "team-b"
    mine = admin.post("/v1/jobs", json=SMALL_SPEC, headers=_bearer("the-admin-key")).json()
    assert mine["tenant"] is None
    ids = {j["id"] for j in admin.get("/v1/jobs", headers=_bearer("the-admin-key")).json()["items"]}
    assert ids == {job["id"], mine["id"]}
    theirs = admin.get("/v1/jobs", headers=_bearer(tenant.key)).json()["items"]
    assert [j["id"] for j in theirs] == [job["id"]]
    assert admin.get(f"/v1/jobs/{mine['id']}", headers=_bearer(tenant.key)).status_code == 404
    assert admin.get("/metrics", headers=_bearer(tenant.key)).status_code == 403
    assert admin.get("/metrics", headers=_bearer("the-admin-key")).status_code == 200


def test_an_empty_admin_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="GRADWATCH_API_KEY is set but empty"):
        make_settings(tmp_path, api_key="")
    with pytest.raises(ValidationError, match="empty"):
        make_settings(tmp_path, api_key="  \n")
    assert make_settings(tmp_path, api_key=" key\n").api_key == "key"
    tenant_key = "gw_0123456789ab_" + "S" * 43
    with pytest.raises(ValidationError, match="holds a tenant key") as refused:
        make_settings(tmp_path, api_key=tenant_key)
    assert "S" * 43 not in str(refused.value)  # a refused value is never echoed
    settings = make_settings(tmp_path)
    for command in (["migrate"], ["serve", "--port", "1"]):
        r = _cli(settings, *command, GRADWATCH_API_KEY="")
        assert r.returncode == 2, r.stderr
        assert "GRADWATCH_API_KEY is set but empty" in r.stderr and "Traceback" not in r.stderr
    example = (Path(__file__).parent.parent / ".env.example").read_text()
    assert "\nGRADWATCH_API_KEY=\n" not in example  # an empty key would now refuse to start


def test_docs_are_public_by_default_and_can_require_a_key(
        make_client: Callable[..., TestClient]) -> None:
    default = make_client(api_key="k")
    assert default.get("/openapi.json").status_code == 200
    private = make_client(api_key="k", docs_public=False)
    r = private.get("/openapi.json")
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert private.get("/openapi.json", headers=_bearer("k")).json()["paths"]
    tenant = create_key(private.app.state.settings, "team-a")
    assert private.get("/openapi.json", headers=_bearer(tenant.key)).status_code == 200
    for page in ("/docs", "/redoc"):  # the pages hold no data; their scripts ask for a key
        assert private.get(page).status_code == 200


# --------------------------------------------------------------------------- quotas


def _count(client: TestClient, model: Any) -> int:
    with client.app.state.sessionmaker() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_queued_quota_is_a_429_with_retry_after_naming_it(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="adm", tenant_max_queued_jobs=3)  # no workers: jobs stay queued
    a = _bearer(create_key(client.app.state.settings, "team-a").key)
    b = _bearer(create_key(client.app.state.settings, "team-b").key)
    first = [client.post("/v1/jobs", json=SMALL_SPEC, headers=a) for _ in range(3)]
    assert [r.status_code for r in first] == [202] * 3
    r = client.post("/v1/jobs", json=SMALL_SPEC, headers=a)
    assert r.status_code == 429 and r.headers["content-type"].startswith(PROBLEM)
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert body["quota"] == "tenant_max_queued_jobs" and body["limit"] == 3
    assert body["current"] == 3 and "GRADWATCH_TENANT_MAX_QUEUED_JOBS" in body["detail"]
    # an idempotent replay is not a new job: no quota needed
    replay_key = {"Idempotency-Key": "k1"}
    client.post(f"/v1/jobs/{first[0].json()['id']}/cancel", headers=a)
    assert client.post("/v1/jobs", json=SMALL_SPEC, headers={**a, **replay_key}).status_code == 202
    assert client.post("/v1/jobs", json=SMALL_SPEC,
                       headers={**a, **replay_key}).status_code == 200
    # a sweep's members count, all or nothing; a repair is a job like any other
    jobs_before, sweeps_before = _count(client, Job), _count(client, Sweep)
    sweep = {"spec": SMALL_SPEC, "axes": [{"path": "seed", "values": [0, 1]}]}
    r = client.post("/v1/sweeps", json=sweep, headers=a)
    assert r.status_code == 429 and r.json()["requested"] == 2
    assert (_count(client, Job), _count(client, Sweep)) == (jobs_before, sweeps_before)
    repair = client.post(f"/v1/jobs/{first[1].json()['id']}/repair",
                         json={"spec_patch": {"seed": 3}}, headers=a)
    assert repair.status_code == 429
    # other tenants and the admin are not affected
    assert client.post("/v1/sweeps", json=sweep, headers=b).status_code == 202
    for _ in range(4):
        assert client.post("/v1/jobs", json=SMALL_SPEC, headers=_bearer("adm")).status_code == 202
    assert "429" in client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["responses"]


def test_workers_never_run_more_of_a_tenants_jobs_than_its_running_quota(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=2, api_key="adm", tenant_max_running_jobs=1,
                             reaper_interval_seconds=0.3, enqueue_retry_seconds=0.3,
                             max_job_runtime_seconds=60)
    with LiveServer(settings) as server:
        a = _bearer(create_key(settings, "team-a").key)
        http = server.http
        ids = [http.post("/v1/jobs", json=LONG_SPEC, headers=a).json()["id"] for _ in range(2)]

        def statuses() -> list[str]:
            return [http.get(f"/v1/jobs/{i}", headers=a).json()["status"] for i in ids]

        deadline = time.monotonic() + 30
        while "running" not in statuses():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # a free worker exists, but the tenant's second job waits
        admin_job = http.post("/v1/jobs", json=SMALL_SPEC, headers=_bearer("adm")).json()["id"]
        for _ in range(30):
            assert sorted(statuses()) == ["queued", "running"], statuses()
            time.sleep(0.1)
        done = http.get(f"/v1/jobs/{admin_job}", headers=_bearer("adm")).json()["status"]
        assert done in ("running", "succeeded")  # the admin has no quota
        first = ids[statuses().index("running")]
        second = ids[1 - ids.index(first)]
        assert http.post(f"/v1/jobs/{first}/cancel", headers=a).status_code == 202
        deadline = time.monotonic() + 30  # the sweeper hands the waiting job out again
        while http.get(f"/v1/jobs/{second}", headers=a).json()["status"] != "running":
            assert time.monotonic() < deadline, statuses()
            time.sleep(0.1)
        assert http.post(f"/v1/jobs/{second}/cancel", headers=a).status_code == 202


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def test_concurrent_submissions_never_exceed_the_queued_quota(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    extra: dict[str, Any] = {}
    if backend == "postgres":
        url = request.getfixturevalue("postgres").create_database()
        extra["database_url"] = url
    settings = make_settings(tmp_path, workers=0, api_key="adm", tenant_max_queued_jobs=5,
                             **extra)
    with LiveServer(settings) as server:
        a = _bearer(create_key(settings, "team-a").key)
        def submit(_: int) -> int:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                return http.post("/v1/jobs", json=SMALL_SPEC, headers=a).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(submit, range(24)))
        assert sorted(codes) == [202] * 5 + [429] * 19, codes
        listed = server.http.get("/v1/jobs", params={"limit": 100}, headers=a).json()["items"]
        assert len(listed) == 5


def test_a_tenant_can_have_quotas_of_its_own(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="adm", tenant_max_queued_jobs=5)
    settings = client.app.state.settings
    a = _bearer(create_key(settings, "team-a").key)
    shown = _cli(settings, "tenants", "quota", "team-a", "--max-queued", "1")
    assert shown.returncode == 0, shown.stderr
    assert "1 queued jobs (its own)" in shown.stdout and "4 running jobs (the setting)" in \
        shown.stdout
    assert client.post("/v1/jobs", json=SMALL_SPEC, headers=a).status_code == 202
    r = client.post("/v1/jobs", json=SMALL_SPEC, headers=a)
    assert r.status_code == 429 and r.json()["limit"] == 1 and "its own quota" in r.json()["detail"]
    assert _cli(settings, "tenants", "quota", "team-a", "--max-running", "2").returncode == 0
    assert "2 running jobs (its own), 1 queued" in _cli(settings, "tenants", "quota",
                                                       "team-a").stdout  # kept the other
    assert _cli(settings, "tenants", "quota", "team-a", "--reset").returncode == 0
    assert client.post("/v1/jobs", json=SMALL_SPEC, headers=a).status_code == 202
    bad = _cli(settings, "tenants", "quota", "team-a", "--max-queued", "-1")
    assert bad.returncode == 2 and "0 or more" in bad.stderr
    assert _cli(settings, "tenants", "quota", "Team A").returncode == 2
