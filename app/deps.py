"""Typed dependencies: settings, sessions, the executor, API-key auth.

:func:`require_api_key` is async so that it runs in the request's task: the tenant it names
(:func:`app.correlation.set_request_tenant`) then reaches every later log line of the
request, in sync dependencies and endpoints too (the thread pool copies the task's context).
The key check itself (a database look-up, scrypt: ~46 ms) runs in the thread pool, off the
event loop.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth_throttle import AuthThrottle, AuthThrottled
from app.correlation import set_request_tenant
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


def _throttled(exc: AuthThrottled) -> ProblemError:
    setting, who = (("GRADWATCH_AUTH_MAX_FAILURES", "for this key id") if exc.scope == "key"
                    else ("GRADWATCH_AUTH_MAX_ADDRESS_FAILURES", "from this address"))
    return ProblemError(
        f"too many failed authentications {who}: at most {exc.limit} within "
        f"{exc.window:g} s ({setting}, GRADWATCH_AUTH_FAILURE_WINDOW_SECONDS); retry after "
        f"{exc.retry_after} s", status=429, slug="auth-throttled", limit=exc.limit,
        window_seconds=exc.window, headers={"Retry-After": str(exc.retry_after)})


def get_auth_throttle(request: Request) -> AuthThrottle | None:
    throttle: AuthThrottle | None = getattr(request.app.state, "auth_throttle", None)
    return throttle


def get_key_verifier(request: Request) -> KeyVerifier:
    verifier: KeyVerifier | None = getattr(request.app.state, "keys", None)
    if verifier is None:  # an app used without its lifespan
        verifier = KeyVerifier(getattr(request.app.state, "sessionmaker", None), 0.0)
    return verifier


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    verifier: Annotated[KeyVerifier, Depends(get_key_verifier)],
    throttle: Annotated[AuthThrottle | None, Depends(get_auth_throttle)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """Who is calling (see README: Tenants and keys).

    * the admin key (GRADWATCH_API_KEY) -> the admin; a valid tenant key -> that tenant;
    * no key: the admin when the server has no admin key and no tenant key was ever
      created (the embedded default), otherwise 401;
    * a wrong key: 401 — except that a server without any key ignores a non-tenant key;
    * too many wrong keys for one key id or from one address: 429 (:mod:`app.auth_throttle`).

    The check runs in a worker thread (it may hash); the tenant is then set here, in the
    request's task, for the rest of the request's log lines (the access line included).
    """
    principal = await run_in_threadpool(
        _authenticate, request, settings, verifier, throttle,
        bearer.credentials if bearer is not None else api_key)
    set_request_tenant(principal.tenant)
    return principal


def _authenticate(request: Request, settings: Settings, verifier: KeyVerifier,
                  throttle: AuthThrottle | None, given: str | None) -> Principal:
    admin_key = settings.api_key
    if given is None:
        if admin_key or verifier.tenant_keys_exist():
            raise _unauthorized(_MISSING, 'Bearer realm="gradwatch"')
        return ADMIN
    if admin_key and hmac.compare_digest(given.encode(), admin_key.encode()):
        return ADMIN
    if not admin_key and parse_key(given) is None and not verifier.tenant_keys_exist():
        return ADMIN  # an open server: a stray non-tenant key changes nothing
    remembered = verifier.remembered(given)
    if remembered is not None:  # verified by this process lately: no hash to protect
        return Principal(tenant=remembered)
    address = request.client.host if request.client is not None else None
    if throttle is None:
        tenant = verifier.tenant_for(given)
    else:
        try:
            throttle.attempt("address", address)
            tenant = verifier.tenant_for(given)
        except AuthThrottled as exc:
            raise _throttled(exc) from None
        except BaseException:  # e.g. the database is down: nothing was decided
            throttle.release("address", address)
            raise
        if tenant is not None:
            throttle.release("address", address)
    if tenant is None:
        raise _unauthorized("the API key is not valid (or was revoked)",
                            'Bearer error="invalid_token"')
    return Principal(tenant=tenant)


# Handlers take `principal: PrincipalDep` and pass it to every lookup of an owned resource;
# FastAPI resolves the dependency once per request (the router-level auth shares it).
PrincipalDep = Annotated[Principal, Depends(require_api_key)]


def require_admin(principal: PrincipalDep) -> Principal:
    """The admin only (server-wide figures such as Prometheus' /metrics): 403 for a tenant."""
    if not principal.is_admin:
        raise ProblemError("only the admin key (GRADWATCH_API_KEY) may read this: it covers "
                           "every tenant", status=403, slug="admin-only")
    return principal
