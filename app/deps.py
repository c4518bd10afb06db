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
from app.settings import Settings
from app.tenancy import ADMIN, Principal

__all__ = ["ExecutorDep", "PrincipalDep", "ReadSessionDep", "SessionDep", "SettingsDep",
           "require_api_key"]


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

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <GRADWATCH_API_KEY>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Alternatively `X-API-Key: <GRADWATCH_API_KEY>`")


def require_api_key(
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """When GRADWATCH_API_KEY is set, every /v1 request must carry it; returns the caller."""
    expected = settings.api_key
    if not expected:
        return ADMIN
    given = bearer.credentials if bearer is not None else api_key
    if given is None:
        raise ProblemError("this server requires an API key: send `Authorization: Bearer <key>` "
                           "or `X-API-Key: <key>`", status=401, slug="unauthorized",
                           headers={"WWW-Authenticate": 'Bearer realm="gradwatch"'})
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ProblemError("the API key is not valid", status=401, slug="unauthorized",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return ADMIN


# Handlers take `principal: PrincipalDep` and pass it to every lookup of an owned resource;
# FastAPI resolves the dependency once per request (the router-level auth shares it).
PrincipalDep = Annotated[Principal, Depends(require_api_key)]
