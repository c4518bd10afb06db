"""Where uploaded data sets and trained models live: one small interface, one local backend.

Nothing outside this module knows paths. A blob is written to a staging file first and only
becomes visible under its key by an atomic rename, so a failed or aborted upload leaves
nothing behind (the staging file is removed with it). The local backend keeps blobs under
``GRADWATCH_BLOB_DIR`` (default ``<data_dir>/blobs``); for workers on other machines that
directory is a shared mount, and an object store (S3, GCS) is one more class with the same
five methods.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = ["BlobStore", "LocalBlobStore", "blob_store", "check_key"]

# Keys are ours (e.g. "datasets/<uuid>.npz", "models/<job id>/final.npz"), never a user's
# file name: lower-case segments, no dot-segments, no absolute paths.
_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}(/[a-z0-9][a-z0-9_.-]{0,127}){0,3}")


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"not a blob key: {key!r}")
    return key


class BlobStore(Protocol):
    def staging(self) -> AbstractContextManager[Path]:
        """A fresh, empty file to write into; removed on exit unless `put` took it."""

    def put(self, key: str, staged: Path) -> int:
        """Publish a staged file under `key` atomically (replacing any old one); its size."""

    def open(self, key: str) -> BinaryIO:
        """Read a blob; FileNotFoundError when there is none."""

    def size(self, key: str) -> int | None:
        """Bytes of a blob, or None when there is none."""

    def delete(self, key: str) -> bool:
        """Remove a blob; whether there was one."""


class LocalBlobStore:
    """Blobs as files under one directory (staging files in its `.staging/`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._staging = self.root / ".staging"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        self._staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._staging, prefix="upload-")
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def put(self, key: str, staged: Path) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = staged.stat().st_size
        os.replace(staged, target)  # same file system: atomic
        return size

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True


def blob_store(settings: Settings) -> BlobStore:
    """The store a server or worker with these settings uses."""
    assert settings.blob_dir is not None  # filled in by Settings' validator
    return LocalBlobStore(settings.blob_dir)
