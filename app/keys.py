"""Tenant API keys: created and revoked from the command line, stored hashed, verified fast.

A key reads ``gw_<key id>_<secret>``: the key id (12 hex digits) is public — it names the
key in ``gradwatch keys list`` and ``revoke`` — and lets a request find its row with one
primary-key lookup; the secret (32 random bytes, base64url) is checked against the stored
scrypt hash with :func:`hmac.compare_digest`. The key itself is printed once, at creation,
and never stored, logged or echoed.

scrypt costs tens of milliseconds on purpose, far too much per request, so each API process
keeps a :class:`KeyVerifier` that remembers the outcome for a presented key (under the
SHA-256 of the key, never the key) for ``GRADWATCH_KEY_CACHE_SECONDS`` (default 5): a
revoked key stops working within that bound in every process. With an
:class:`~app.auth_throttle.AuthThrottle`, a real key id whose wrong secrets keep coming is
refused without hashing once its failures fill the window (see :mod:`app.auth_throttle`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth_throttle import AuthThrottle
from app.models import ApiKey, utcnow

__all__ = [
    "KEY_PREFIX",
    "KeyVerifier",
    "NewKey",
    "TenantNameError",
    "create_key",
    "hash_secret",
    "list_keys",
    "parse_key",
    "revoke_key",
    "validate_tenant",
    "verify_secret",
]

KEY_PREFIX = "gw_"
_KEY_RE = re.compile(r"^gw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TENANT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")

# scrypt cost (RFC 7914): N=2**14, r=8, p=1 is 16 MiB and ~30-60 ms per hash. The secrets are
# 256 random bits, so this is defence in depth for a stolen table, not password stretching.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_CACHE_MAX = 10_000


class TenantNameError(ValueError):
    """A tenant name that is not a short slug; the message says what is allowed."""


def validate_tenant(name: str) -> str:
    """``name`` if it is a tenant name: 1-40 of a-z, 0-9 and inner hyphens."""
    if not TENANT_RE.fullmatch(name):
        raise TenantNameError(
            f"tenant name {name[:60]!r} is not valid: use 1 to 40 lower-case letters, digits "
            "and hyphens (not at either end), e.g. 'team-vision'")
    return name


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$<salt>$<hash>`` of ``secret`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32,
                            maxmem=64 * 1024 * 1024)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` (compared in constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected),
                                maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def parse_key(text: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a tenant key, or None when ``text`` is not one."""
    match = _KEY_RE.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``key`` is shown once and exists nowhere else."""

    key_id: str
    tenant: str
    label: str | None
    created_at: datetime
    key: str


def create_key(session: Session, *, tenant: str, label: str | None = None) -> NewKey:
    """Insert a new key for ``tenant`` (validated); the caller commits."""
    validate_tenant(tenant)
    if label is not None and len(label) > 200:
        raise ValueError("the label is longer than 200 characters")
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    row = ApiKey(key_id=key_id, tenant=tenant, key_hash=hash_secret(secret), label=label,
                 created_at=utcnow(), revoked_at=None)
    session.add(row)
    session.flush()
    return NewKey(key_id, tenant, label, row.created_at, f"{KEY_PREFIX}{key_id}_{secret}")


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    """Mark the key revoked (once; revoking again keeps the first time); None if unknown."""
    session.execute(update(ApiKey).where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
    return session.get(ApiKey, key_id, populate_existing=True)


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Every key (or a tenant's), oldest first. Rows hold hashes only."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


class KeyVerifier:
    """Which tenant a presented key belongs to, remembered briefly per process.

    Both outcomes are cached for ``ttl`` seconds under the SHA-256 of the key: a valid key
    costs one scrypt per ``ttl`` per process, a wrong one (even with a real key id) cannot
    make the process hash it again and again within ``ttl``.
    """

    def __init__(self, factory: sessionmaker[Session] | None, ttl: float,
                 throttle: AuthThrottle | None = None) -> None:
        self.factory = factory
        self.ttl = ttl
        self.throttle = throttle
        self._lock = threading.Lock()
        self._cache: dict[bytes, tuple[str | None, float]] = {}
        self._keys_exist: tuple[bool, float] = (False, 0.0)

    def remembered(self, presented: str) -> str | None:
        """The tenant of a key this process verified within the ttl (costs one SHA-256);
        None when it has not, or remembers it as wrong."""
        fingerprint = hashlib.sha256(presented.encode()).digest()
        with self._lock:
            hit = self._cache.get(fingerprint)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def tenant_for(self, presented: str) -> str | None:
        """The tenant of a valid, unrevoked key; None for anything else. Raises
        :class:`~app.auth_throttle.AuthThrottled` instead of hashing a secret for a key id
        whose failures filled its window."""
        parsed = parse_key(presented)
        if parsed is None or self.factory is None:
            return None
        fingerprint = hashlib.sha256(presented.encode()).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(fingerprint)
        if hit is not None and hit[1] > now:
            return hit[0]
        tenant = self._verify(*parsed)
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
            self._cache[fingerprint] = (tenant, now + self.ttl)
        return tenant

    def _verify(self, key_id: str, secret: str) -> str | None:
        assert self.factory is not None
        with self.factory() as session:
            row = session.get(ApiKey, key_id)
            if row is None or row.revoked_at is not None:
                return None
            tenant, stored = row.tenant, row.key_hash
        if self.throttle is None:
            return tenant if verify_secret(secret, stored) else None
        self.throttle.attempt("key", key_id)  # counted before the hash: see auth_throttle
        try:
            valid = verify_secret(secret, stored)
        except BaseException:
            self.throttle.release("key", key_id)
            raise
        if not valid:
            return None
        self.throttle.release("key", key_id)
        return tenant

    def tenant_keys_exist(self) -> bool:
        """Whether any tenant key was ever created here (revoked ones count: revoking every
        key does not open the server). Once true it stays true; false is re-read every ttl."""
        known, until = self._keys_exist
        if known or self.factory is None or until > time.monotonic():
            return known
        with self.factory() as session:
            found = bool(session.scalar(select(exists().where(ApiKey.key_id.is_not(None)))))
        self._keys_exist = (found, time.monotonic() + self.ttl)
        return found

    def forget(self) -> None:
        """Drop every remembered outcome (tests; a revoke in this process)."""
        with self._lock:
            self._cache.clear()
        self._keys_exist = (False, 0.0)
