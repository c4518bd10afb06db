"""Typed dependencies: settings, sessions, the executor, API-key auth."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db import writer_bind
from app.errors import ProblemError
from app.executors import Executor
from app.keys import KeyVerifier, parse_key
from app.settings import Settings
from app.tenancy import ADMIN, Principal

__all__ = ["ExecutorDep", "PrincipalDep", "ReadSessionDep", "SessionDep", "SettingsDep",
           "require_admin", "require_api_key"]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_executor(request: Request) -> Executor:
    executor: Executor = request.app.state.executor
    return executor


def get_session(request: Request) -> Iterator[Session]:
    """A session for a request that writes (SQLite: takes the write lock at BEGIN).

    The handler commits; anything not committed is rolled back when the request ends.
    """
    factory = request.app.state.sessionmaker
    with factory(bind=writer_bind(request.app.state.engine)) as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session for a request that only reads."""
    with request.app.state.sessionmaker() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]

_bearer = HTTPBearer(auto_error=False, description=(
    "`Authorization: Bearer <key>`: a tenant key (`gw_...`, from `gradwatch keys create`; "
    "sees only its tenant's resources) or the admin key (GRADWATCH_API_KEY; sees all)."))
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Alternatively `X-API-Key: <key>` (either kind).")

_MISSING = ("this server requires an API key: send `Authorization: Bearer <key>` or "
            "`X-API-Key: <key>`")


def _unauthorized(detail: str, challenge: str) -> ProblemError:
    # never echo the presented key: the detail is one of two fixed sentences
    return ProblemError(detail, status=401, slug="unauthorized",
                        headers={"WWW-Authenticate": challenge})


def get_key_verifier(request: Request) -> KeyVerifier:
    verifier: KeyVerifier | None = getattr(request.app.state, "keys", None)
    if verifier is None:  # an app used without its lifespan
        verifier = KeyVerifier(getattr(request.app.state, "sessionmaker", None), 0.0)
    return verifier


def require_api_key(
    settings: SettingsDep,
    verifier: Annotated[KeyVerifier, Depends(get_key_verifier)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """Who is calling (see README: Tenants and keys).

    * the admin key (GRADWATCH_API_KEY) -> the admin; a valid tenant key -> that tenant;
    * no key: the admin when the server has no admin key and no tenant key was ever
      created (the embedded default), otherwise 401;
    * a wrong key: 401 — except that a server without any key ignores a non-tenant key.
    """
    admin_key = settings.api_key
    given = bearer.credentials if bearer is not None else api_key
    if given is None:
        if admin_key or verifier.tenant_keys_exist():
            raise _unauthorized(_MISSING, 'Bearer realm="gradwatch"')
        return ADMIN
    if admin_key and hmac.compare_digest(given.encode(), admin_key.encode()):
        return ADMIN
    tenant = verifier.tenant_for(given)
    if tenant is not None:
        return Principal(tenant=tenant)
    if not admin_key and parse_key(given) is None and not verifier.tenant_keys_exist():
        return ADMIN  # an open server: a stray non-tenant key changes nothing
    raise _unauthorized("the API key is not valid (or was revoked)",
                        'Bearer error="invalid_token"')


# Handlers take `principal: PrincipalDep` and pass it to every lookup of an owned resource;
# FastAPI resolves the dependency once per request (the router-level auth shares it).
PrincipalDep = Annotated[Principal, Depends(require_api_key)]


def require_admin(principal: PrincipalDep) -> Principal:
    """The admin only (server-wide figures such as Prometheus' /metrics): 403 for a tenant."""
    if not principal.is_admin:
        raise ProblemError("only the admin key (GRADWATCH_API_KEY) may read this: it covers "
                           "every tenant", status=403, slug="admin-only")
    return principal
