"""Retry policy, headers, streamed request bodies and downloads shared by the sync and async
clients."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import BinaryIO

import httpx

__all__ = ["NOT_SENT", "RETRYABLE_ERRORS", "UPLOAD_TYPES", "Attempt", "Backoff", "Download",
           "FileBody", "auth_headers"]

#: a request that failed with one of these never reached the application, or its answer was
#: lost: resend (GETs, and POSTs that carry an Idempotency-Key)
RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError,
                    httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadTimeout)
#: ... of which these mean the request was never sent: always safe to resend
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``api_key``, without the whitespace around it (a key
    read from a file ends in a newline; no header carries it). ValueError naming the first
    character a header cannot carry, never the key (a secret, printed into logs)."""
    key = (api_key or "").strip()
    if not key:
        return {}
    for position, char in enumerate(key):
        if not (char.isascii() and char.isprintable()):
            raise ValueError(f"the API key holds {char!r} at position {position}, which an HTTP "
                             "header cannot carry (keys are printable ASCII): check that it was "
                             "copied whole, without quotes")
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Attempt:
    number: int
    last: bool
    backoff: Backoff

    def delay(self, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(30.0, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return self.backoff.delay(self.number)


@dataclass(frozen=True)
class Backoff:
    """``retries`` resends after the first try, waiting ``base * 2**n`` seconds (at most 8)."""

    retries: int = 5
    base: float = 0.25

    def delay(self, attempt: int) -> float:
        return float(min(8.0, self.base * 2 ** max(0, attempt - 1)))

    def attempts(self) -> Iterator[Attempt]:
        for n in range(1, self.retries + 2):
            yield Attempt(n, n == self.retries + 1, self)


CHUNK = 1 << 16
#: a data set file's media type by its format (what ``POST /v1/datasets`` reads)
UPLOAD_TYPES = {"csv": "text/csv", "npz": "application/x-npz"}


class FileBody:
    """A request body read from a file a chunk at a time, never whole; every attempt (a
    retry) reads it again from the start: a path is reopened, an open file sought back."""

    def __init__(self, source: str | PathLike[str] | BinaryIO) -> None:
        if isinstance(source, str | PathLike):
            self.path: Path | None = Path(source)
            self.file: BinaryIO | None = None
            self.start = 0
            if self.path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(source))
            if not self.path.is_file():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(source))
        else:
            self.path, self.file = None, source
            self.start = source.tell() if source.seekable() else -1

    @property
    def name(self) -> str:
        return str(self.path if self.path is not None else getattr(self.file, "name", ""))

    @contextmanager
    def _opened(self) -> Iterator[BinaryIO]:
        if self.path is not None:
            with self.path.open("rb") as f:
                yield f
            return
        assert self.file is not None
        if self.start >= 0:
            self.file.seek(self.start)
        yield self.file

    def chunks(self) -> Iterator[bytes]:
        with self._opened() as f:
            while chunk := f.read(CHUNK):
                yield chunk

    async def achunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():  # local file reads: short, and one chunk at a time
            yield chunk


class Download:
    """Where a streamed response goes: a temporary file next to ``path``, renamed onto it only
    once the whole body arrived (never a half-written file at ``path``)."""

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        # refused before the request, not once the body arrived; named as the caller wrote it
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not self.path.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part",
                                       dir=self.path.parent)
        except OSError as exc:  # e.g. a read-only folder: name the target, not the temp file
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from None
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, self.path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
