"""Where uploaded data sets and trained models live: one small interface, one local backend.

Nothing outside this module knows paths. A blob is written to a staging file first and only
becomes visible under its key by an atomic rename, so a failed or aborted upload leaves
nothing behind (the staging file is removed with it). The local backend keeps blobs under
``GRADWATCH_BLOB_DIR`` (default ``<data_dir>/blobs``); for workers on other machines that
directory is a shared mount, and an object store (S3, GCS) is one more class with the same
methods. Deleting a blob removes the directories it leaves empty below the top level (a
deleted job's ``models/<job id>/``); listing blobs and staging files with their ages is what
:mod:`app.blob_gc` needs to remove what a crash left behind.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = ["BlobEntry", "BlobStore", "LocalBlobStore", "blob_store", "check_key"]

# Keys are ours (e.g. "datasets/<uuid>.npz", "models/<job id>/final.npz"), never a user's
# file name: lower-case segments, no dot-segments, no absolute paths.
_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}(/[a-z0-9][a-z0-9_.-]{0,127}){0,3}")
_STAGED = re.compile(r"upload-[A-Za-z0-9_]{1,64}")  # tempfile.mkstemp(prefix="upload-")


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"not a blob key: {key!r}")
    return key


def _is_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key)) and ".." not in key


@dataclass(frozen=True)
class BlobEntry:
    """A stored blob (or a staging file, ``name`` its file name) and when it was last
    written."""

    name: str
    size: int
    modified: float  # POSIX time


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

    def blobs(self, prefix: str) -> Iterator[BlobEntry]:
        """The blobs whose keys start with ``prefix/`` (keys this store could have written)."""

    def staged(self) -> Iterator[BlobEntry]:
        """The staging files (of uploads in progress, or abandoned by a crash)."""

    def discard_staged(self, name: str) -> bool:
        """Remove a staging file by its name; whether there was one."""

    def prune_empty(self, prefix: str, before: float) -> list[str]:
        """Remove the empty directories below ``prefix/`` last changed before ``before``
        (POSIX time); the keys (prefixes) removed."""


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
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # a job's models/<job id>/ goes with its last model; top-level directories stay (a
        # concurrent put into them would find its directory gone)
        parent = path.parent
        while parent != self.root and parent.parent != self.root:
            try:
                parent.rmdir()
            except OSError:  # not empty, or already gone
                break
            parent = parent.parent
        return True

    def blobs(self, prefix: str) -> Iterator[BlobEntry]:
        top = self._path(prefix)
        for directory, _, files in os.walk(top):
            for name in files:
                key = (Path(directory) / name).relative_to(self.root).as_posix()
                entry = self._entry(self.root / key, key)
                if entry is not None and _is_key(key):
                    yield entry

    def staged(self) -> Iterator[BlobEntry]:
        try:
            names = sorted(os.listdir(self._staging))
        except FileNotFoundError:
            return
        for name in names:
            entry = self._entry(self._staging / name, name)
            if entry is not None and _STAGED.fullmatch(name):
                yield entry

    def discard_staged(self, name: str) -> bool:
        if not _STAGED.fullmatch(name):
            raise ValueError(f"not a staging file: {name!r}")
        try:
            (self._staging / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def prune_empty(self, prefix: str, before: float) -> list[str]:
        top = self._path(prefix)
        removed: list[str] = []
        for directory, _, _ in os.walk(top, topdown=False):
            path = Path(directory)
            if path == top:
                continue
            try:
                if path.stat().st_mtime >= before or any(path.iterdir()):
                    continue
                path.rmdir()
            except OSError:  # filled or removed meanwhile
                continue
            removed.append(path.relative_to(self.root).as_posix())
        return removed

    @staticmethod
    def _entry(path: Path, name: str) -> BlobEntry | None:
        """A regular file's entry (None for links, directories and files gone meanwhile)."""
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return BlobEntry(name, info.st_size, info.st_mtime)


def blob_store(settings: Settings) -> BlobStore:
    """The store a server or worker with these settings uses."""
    assert settings.blob_dir is not None  # filled in by Settings' validator
    return LocalBlobStore(settings.blob_dir)
