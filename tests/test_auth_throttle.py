"""Failed-authentication throttling: wrong secrets for a real key id (and failures from one
address) turn into 429 + Retry-After without a scrypt hash, until the window passes; the
tenant of an authenticated request reaches the access log line."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import make_settings, served
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import app.keys
from app.auth_throttle import AuthThrottle, AuthThrottled
from app.cli import create_key
from app.correlation import JsonFormatter
from app.db import build_engine, build_sessionmaker
from app.main import create_app

ADMIN = "admin-key-for-throttle-tests"
PROBLEM = "application/problem+json"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wrong(key: str, n: int) -> str:
    """``key`` with another secret (the same key id)."""
    return key[:-4] + f"{n:04d}"


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every scrypt verification the server runs (a counting wrapper around the real one)."""
    calls: list[str] = []
    real = app.keys.verify_secret

    def counting(secret: str, stored: str) -> bool:
        calls.append(secret)
        return real(secret, stored)

    monkeypatch.setattr(app.keys, "verify_secret", counting)
    return calls


def test_wrong_secrets_for_a_key_id_get_429_without_hashing_until_the_window_passes(
        make_client: Callable[..., TestClient], hashes: list[str]) -> None:
    client = make_client(api_key=ADMIN, auth_max_failures=3, auth_failure_window_seconds=2.0)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    key = create_key(settings, "team-a")
    for n in range(3):
        r = client.get("/v1/jobs", headers=_bearer(_wrong(key.key, n)))
        assert r.status_code == 401, r.text
    assert len(hashes) == 3
    for n in range(3, 6):
        r = client.get("/v1/jobs", headers=_bearer(_wrong(key.key, n)))
        assert r.status_code == 429 and r.headers["content-type"].startswith(PROBLEM)
        assert 1 <= int(r.headers["retry-after"]) <= 2
        body = r.json()
        assert body["type"] == "https://gradwatch.dev/problems/auth-throttled"
        assert body["status"] == 429 and body["limit"] == 3
        assert "GRADWATCH_AUTH_MAX_FAILURES" in body["detail"]
        assert key.key[-10:] not in r.text  # the key is never echoed
    # the right secret is refused too while the key id is locked out: nothing is hashed
    assert client.get("/v1/jobs", headers=_bearer(key.key)).status_code == 429
    assert len(hashes) == 3
    time.sleep(2.1)  # the window passes
    assert client.get("/v1/jobs", headers=_bearer(key.key)).status_code == 200
    assert len(hashes) == 4
    assert client.get("/v1/jobs", headers=_bearer(_wrong(key.key, 9))).status_code == 401


def test_a_success_does_not_reset_another_key_ids_failures(
        make_client: Callable[..., TestClient], hashes: list[str]) -> None:
    client = make_client(api_key=ADMIN, auth_max_failures=3, auth_failure_window_seconds=60)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    a, b = create_key(settings, "team-a"), create_key(settings, "team-b")
    for n in range(2):
        assert client.get("/v1/jobs", headers=_bearer(_wrong(a.key, n))).status_code == 401
    assert client.get("/v1/jobs", headers=_bearer(b.key)).status_code == 200
    assert client.get("/v1/jobs", headers=_bearer(_wrong(a.key, 2))).status_code == 401
    assert client.get("/v1/jobs", headers=_bearer(_wrong(a.key, 3))).status_code == 429
    assert client.get("/v1/jobs", headers=_bearer(a.key)).status_code == 429
    # b is another key id: its own right secret still works, its own failures still count
    assert client.get("/v1/jobs", headers=_bearer(_wrong(b.key, 0))).status_code == 401
    assert len(hashes) == 5  # 3 wrong a, right b, wrong b


def test_a_key_verified_moments_ago_keeps_working_during_its_lockout(
        make_client: Callable[..., TestClient], hashes: list[str]) -> None:
    """A process that remembers the right key (GRADWATCH_KEY_CACHE_SECONDS) needs no hash
    for it: an attacker locking the key id out does not lock its owner out of that process."""
    client = make_client(api_key=ADMIN, auth_max_failures=2, auth_failure_window_seconds=60)
    key = create_key(client.app.state.settings, "team-a")  # type: ignore[attr-defined]
    assert client.get("/v1/jobs", headers=_bearer(key.key)).status_code == 200
    for n in range(4):
        client.get("/v1/jobs", headers=_bearer(_wrong(key.key, n)))
    assert client.get("/v1/jobs", headers=_bearer(_wrong(key.key, 7))).status_code == 429
    assert client.get("/v1/jobs", headers=_bearer(key.key)).status_code == 200
    assert len(hashes) == 3


def test_concurrent_wrong_secrets_never_hash_more_than_the_limit(
        make_client: Callable[..., TestClient], hashes: list[str]) -> None:
    client = make_client(api_key=ADMIN, auth_max_failures=3, auth_failure_window_seconds=60)
    key = create_key(client.app.state.settings, "team-a")  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(
            lambda n: client.get("/v1/jobs", headers=_bearer(_wrong(key.key, n))).status_code,
            range(24)))
    assert sorted(codes) == [401] * 3 + [429] * 21, codes
    assert len(hashes) == 3


def test_failures_from_one_address_are_throttled_across_keys(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key=ADMIN, auth_max_address_failures=4,
                         auth_failure_window_seconds=60)
    key = create_key(client.app.state.settings, "team-a")  # type: ignore[attr-defined]
    unknown = "gw_0123456789ab_" + "A" * 43
    for wrong in (unknown, "not-the-admin-key", unknown.replace("A", "B"), "guess"):
        assert client.get("/v1/jobs", headers=_bearer(wrong)).status_code == 401
    r = client.get("/v1/jobs", headers=_bearer("another-guess"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 59
    assert "GRADWATCH_AUTH_MAX_ADDRESS_FAILURES" in r.json()["detail"]
    assert client.get("/v1/jobs", headers=_bearer(key.key)).status_code == 429
    assert client.get("/v1/jobs", headers=_bearer(ADMIN)).status_code == 200  # no hash to guard
    elsewhere = TestClient(client.app, client=("203.0.113.7", 40000))
    assert elsewhere.get("/v1/jobs", headers=_bearer(key.key)).status_code == 200
    assert elsewhere.get("/v1/jobs", headers=_bearer("guess")).status_code == 401


def test_a_database_outage_is_not_counted_as_failed_authentications(
        make_client: Callable[..., TestClient], tmp_path: Any) -> None:
    client = make_client(api_key=ADMIN, auth_max_address_failures=2, auth_max_failures=2)
    key = create_key(client.app.state.settings, "team-a")  # type: ignore[attr-defined]
    verifier = client.app.state.keys  # type: ignore[attr-defined]
    working = verifier.factory
    gone = build_engine(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}")
    verifier.factory = build_sessionmaker(gone)
    try:
        codes = [client.get("/v1/jobs", headers=_bearer(_wrong(key.key, n))).status_code
                 for n in range(5)]
    finally:
        verifier.factory = working
        gone.dispose()
    assert codes == [503] * 5  # the database could not say: not a failure
    assert client.get("/v1/jobs", headers=_bearer(key.key)).status_code == 200


def test_random_key_ids_do_not_grow_the_key_table_and_throttled_requests_are_counted(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key=ADMIN, auth_max_address_failures=5)
    for n in range(8):
        client.get("/v1/jobs", headers=_bearer(f"gw_{n:012x}_" + "A" * 43))
    throttle: AuthThrottle = client.app.state.auth_throttle  # type: ignore[attr-defined]
    assert throttle.tracked("key") == 0  # unknown ids cost no hash and are not tracked
    assert throttle.tracked("address") == 1
    metrics = client.get("/metrics", headers=_bearer(ADMIN)).text
    samples = {(s.name, s.labels.get("scope")): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples
               if s.name.startswith("gradwatch_auth_throttled")}
    assert samples == {("gradwatch_auth_throttled_requests_total", "address"): 3.0,
                       ("gradwatch_auth_throttled_requests_total", "key"): 0.0}


def test_the_counter_tables_are_bounded() -> None:
    now = [0.0]
    throttle = AuthThrottle(max_key_failures=3, max_address_failures=3, window=10.0,
                            max_entries=100, clock=lambda: now[0])
    for n in range(10_000):  # an attacker cycling addresses (or real key ids)
        throttle.attempt("address", f"10.0.{n // 256}.{n % 256}")
        now[0] += 0.0001
    assert 90 <= throttle.tracked("address") <= 100
    for _ in range(3):
        throttle.attempt("key", "0123456789ab")
    with pytest.raises(AuthThrottled) as refused:
        throttle.attempt("key", "0123456789ab")
    assert refused.value.retry_after == 10 and throttle.throttled["key"] == 1
    now[0] += 10.0
    throttle.attempt("key", "0123456789ab")  # a new window
    off = AuthThrottle(max_key_failures=0, max_address_failures=0, window=10.0)
    for _ in range(100):
        off.attempt("key", "0123456789ab")
    assert off.tracked("key") == 0


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Any) -> None:
    monkeypatch.setenv("GRADWATCH_AUTH_MAX_FAILURES", "7")
    monkeypatch.setenv("GRADWATCH_AUTH_MAX_ADDRESS_FAILURES", "0")
    monkeypatch.setenv("GRADWATCH_AUTH_FAILURE_WINDOW_SECONDS", "30")
    settings = make_settings(tmp_path)
    assert (settings.auth_max_failures, settings.auth_max_address_failures,
            settings.auth_failure_window_seconds) == (7, 0, 30.0)


# --------------------------------------------------------------------------- access log


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """uvicorn's access log lines, formatted as `gradwatch serve` formats them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("uvicorn.access")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_the_access_log_line_names_the_tenant_of_the_request(
        tmp_path: Any, access_log: io.StringIO) -> None:
    settings = make_settings(tmp_path, api_key=ADMIN)
    application = create_app(settings)
    with served(application, log_config=None, log_level="info", access_log=True) as url, \
            httpx.Client(base_url=url) as http:
        key = create_key(settings, "team-vision")  # the server has migrated the database
        for path, headers, status in [
                ("/v1/jobs?as=tenant", {**_bearer(key.key), "X-Request-ID": "t-1"}, 200),
                ("/v1/jobs?as=admin", {**_bearer(ADMIN), "X-Request-ID": "t-2"}, 200),
                ("/v1/jobs?as=nobody", {"X-Request-ID": "t-3"}, 401),
                ("/healthz", {"X-Request-ID": "t-4"}, 200)]:
            assert http.get(path, headers=headers).status_code == status
    lines: list[dict[str, Any]] = [json.loads(line) for line in access_log.getvalue().splitlines()]
    by_request = {line["request_id"]: line for line in lines}
    assert set(by_request) == {"t-1", "t-2", "t-3", "t-4"}, lines
    assert "/v1/jobs?as=tenant" in by_request["t-1"]["message"]
    assert by_request["t-1"]["tenant"] == "team-vision"
    assert [by_request[r]["tenant"] for r in ("t-2", "t-3", "t-4")] == [None, None, None]
