"""Removing what a crash left in the blob store: blobs no row refers to, abandoned staging
files, empty model directories.

A data set's blob is published before its row commits (:func:`app.datasets.store_dataset`),
a deleted data set's blob and a deleted job's models are removed after the deleting commit;
a process that dies in between leaves a blob nothing refers to. An upload that dies leaves
its staging files. :func:`collect_garbage` removes, when they are older than the grace period
(``GRADWATCH_BLOB_GC_GRACE_SECONDS``, 1 hour):

* staging files (an upload in progress writes to its files all the time);
* ``datasets/...`` blobs that no data set row names (``datasets.blob_key``);
* ``models/<job id>/...`` blobs of jobs that do not exist;
* empty directories under ``models/``.

Nothing younger than the grace period is touched: an upload may be between publishing its
blob and committing its row, a worker may be writing a model. It runs at every API process's
start-up (``GRADWATCH_BLOB_GC_ON_START``) and as ``gradwatch gc``. A database with no job and
no data set at all next to a blob store that has blobs looks like the wrong database (or the
wrong ``GRADWATCH_BLOB_DIR``): then no blob is removed unless ``force``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import exists, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from app.blobstore import BlobEntry, BlobStore, blob_store
from app.models import Dataset, Job
from app.settings import Settings

__all__ = ["GcReport", "Removed", "collect_at_start", "collect_garbage"]

log = logging.getLogger(__name__)

_CHUNK = 500  # keys per IN (...) query: far below every driver's parameter limit


@dataclass(frozen=True)
class Removed:
    """One thing removed (or that would be, in a dry run)."""

    kind: str  # "staging", "dataset", "model", "directory"
    name: str  # a blob key, a staging file name, a directory's key
    size: int
    age_seconds: float
    reason: str


@dataclass
class GcReport:
    removed: list[Removed] = field(default_factory=list)
    young: int = 0  # unreferenced, but within the grace period: kept
    refused: str | None = None  # why no blob was removed (the wrong-database guard)

    @property
    def bytes_removed(self) -> int:
        return sum(item.size for item in self.removed)

    def summary(self, dry_run: bool = False) -> str:
        verb = "would remove" if dry_run else "removed"
        text = (f"{verb} {len(self.removed)} item(s), {self.bytes_removed} bytes; kept "
                f"{self.young} unreferenced file(s) younger than the grace period")
        return text + (f"; {self.refused}" if self.refused else "")


def collect_garbage(store: BlobStore, factory: sessionmaker[Session], *, grace_seconds: float,
                    dry_run: bool = False, force: bool = False,
                    now: float | None = None) -> GcReport:
    """Remove (``dry_run``: only list) what no row refers to and is older than
    ``grace_seconds``; see the module docstring."""
    now = time.time() if now is None else now
    before = now - grace_seconds
    report = GcReport()

    def old(entry: BlobEntry) -> bool:
        if entry.modified < before:
            return True
        report.young += 1
        return False

    for entry in store.staged():
        if old(entry):
            _remove(report, "staging", entry, now, "abandoned upload staging file",
                    None if dry_run else store.discard_staged)
    # list the blobs first, then ask the database: a blob published meanwhile is young
    datasets = list(store.blobs("datasets"))
    models = list(store.blobs("models"))
    with factory() as session:
        if (datasets or models) and not force and _database_is_empty(session):
            report.refused = ("the database holds no job and no data set while the blob "
                              "store holds blobs: is GRADWATCH_BLOB_DIR this database's? "
                              "No blob removed (`gradwatch gc --force` removes them)")
            log.warning("blob store garbage collection: %s", report.refused)
            return report
        named = _existing(session, Dataset.blob_key, [e.name for e in datasets])
        jobs = _existing(session, Job.id, [_job_id(e.name) for e in models])
    for entry in datasets:
        if entry.name not in named and old(entry):
            _remove(report, "dataset", entry, now, "no data set row refers to it",
                    None if dry_run else store.delete)
    for entry in models:
        if _job_id(entry.name) not in jobs and old(entry):
            _remove(report, "model", entry, now, "its job does not exist",
                    None if dry_run else store.delete)
    if not dry_run:
        for name in store.prune_empty("models", before):
            report.removed.append(Removed("directory", name, 0, 0.0, "empty"))
    return report


def _remove(report: GcReport, kind: str, entry: BlobEntry, now: float, reason: str,
            action: Callable[[str], bool] | None) -> None:
    if action is not None:
        try:
            if not action(entry.name):
                return  # removed by someone else meanwhile
        except OSError:
            log.exception("could not remove %s %s", kind, entry.name)
            return
    report.removed.append(Removed(kind, entry.name, entry.size, max(0.0, now - entry.modified),
                                  reason))


def _job_id(key: str) -> str:
    return key.split("/")[1] if key.count("/") >= 2 else ""


def _database_is_empty(session: Session) -> bool:
    return not (session.scalar(select(exists().where(Job.id.is_not(None))))
                or session.scalar(select(exists().where(Dataset.id.is_not(None)))))


def _existing(session: Session, column: InstrumentedAttribute[str],
              values: Iterable[str]) -> set[str]:
    """Which of ``values`` appear in ``column`` (queried in chunks)."""
    wanted = sorted(set(values))
    found: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        found.update(session.scalars(select(column).where(column.in_(chunk))))
    return found


def collect_at_start(settings: Settings, factory: sessionmaker[Session]) -> GcReport | None:
    """:func:`collect_garbage` for a starting API process: logs what it removed; a failure
    is logged and never stops the start."""
    try:
        report = collect_garbage(blob_store(settings), factory,
                                 grace_seconds=settings.blob_gc_grace_seconds)
    except Exception:
        log.exception("blob store garbage collection failed; starting anyway")
        return None
    for item in report.removed:
        log.info("blob store: removed %s %s (%d bytes, %.0f s old): %s", item.kind, item.name,
                 item.size, item.age_seconds, item.reason)
    if report.removed:
        log.info("blob store garbage collection: %s", report.summary())
    return report
