"""Uploaded data sets: storing one (normalised ``.npz`` blob, then its row), finding,
listing and deleting them for a caller, the tenant's upload quota, and handing their arrays to
whoever trains or predicts.

A data set is stored in this order: the normalised arrays go to a staging file, the staging
file becomes the blob ``datasets/<id>.npz`` (atomic rename), the row is inserted and
committed; if the commit fails the blob is removed. A refusal at any step leaves no staging
file, no blob and no row.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.blobstore import BlobStore
from app.errors import ConflictError, NotFoundError, ProblemError
from app.models import Dataset, Job, utcnow
from app.repositories import as_utc
from app.settings import Settings
from app.tenancy import ADMIN, Principal
from app.uploads import (
    CsvPart,
    FilePart,
    Parsed,
    UploadLimits,
    check_arrays,
    invalid,
    read_npy,
    read_npz,
)
from core.spec import TrainingSpec, UploadedData, UploadedShape

if TYPE_CHECKING:
    from app.upload_body import Received

__all__ = ["attach_uploaded", "blob_key", "dataset_to_read", "delete_dataset", "get_dataset",
           "list_datasets", "load_dataset_arrays", "parent_lookup", "store_dataset",
           "upload_limits",
           "uploaded_lookup"]

log = logging.getLogger(__name__)

# A display name, never a path: no slashes, no leading dot, no control characters.
_NAME = re.compile(r"[^\W][\w .,()+=@#-]{0,199}")
_ACTIVE = ("queued", "running")


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(max_bytes=settings.max_upload_bytes, max_rows=settings.max_upload_rows,
                        max_columns=settings.max_upload_columns,
                        max_line_bytes=settings.max_upload_line_bytes,
                        max_values=settings.max_data_values,
                        max_classes=settings.max_upload_classes)


def blob_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}.npz"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise invalid(f"name {name[:60]!r} is not allowed: 1-200 letters, digits, spaces and "
                      "._-,()+=@# (no slashes, no leading dot: a name, not a path)", "name")
    return name


# --------------------------------------------------------------------------------------------
# Quota
# --------------------------------------------------------------------------------------------


def tenant_usage(session: Session, tenant: str | None) -> int:
    """Stored bytes of the tenant's data sets."""
    total = session.scalar(select(func.coalesce(func.sum(Dataset.stored_bytes), 0))
                           .where(Dataset.tenant == tenant))
    return int(total or 0)


def check_quota(session: Session, principal: Principal, settings: Settings, adding: int) -> None:
    """429 when storing ``adding`` more bytes would pass the tenant's upload quota."""
    if principal.is_admin:
        return
    quota = settings.tenant_max_upload_bytes
    if session.get_bind().dialect.name == "postgresql":
        # one upload of a tenant at a time between this check and the commit (SQLite: the
        # writer session already holds the database's write lock)
        key = int.from_bytes(hashlib.sha256(f"upload:{principal.tenant}".encode()).digest()[:8],
                             "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(key)))
    used = tenant_usage(session, principal.tenant)
    if used + adding > quota:
        raise ProblemError(
            f"tenant {principal.tenant!r} stores {used} bytes of data sets; this upload would "
            f"bring it past the quota of {quota} bytes (GRADWATCH_TENANT_MAX_UPLOAD_BYTES): "
            "delete data sets you no longer need", status=429, slug="quota-exceeded",
            limit=quota, value=used + adding, headers={"Retry-After": "3600"})


# --------------------------------------------------------------------------------------------
# Storing
# --------------------------------------------------------------------------------------------


def _parsed(received: Received, target: str | None, limits: UploadLimits) -> tuple[Parsed, str]:
    """The upload's arrays and the SHA-256 of its bytes."""
    parts = received.parts
    if received.format == "csv":
        csv_part = parts["file"]
        assert isinstance(csv_part, CsvPart)
        return csv_part.parsed(target), csv_part.sha256.hexdigest()
    if target is not None:
        raise invalid("`target` names a CSV column; an .npz or .npy upload has X and y",
                      "target")
    if received.format == "npz":
        part = parts["file"]
        assert isinstance(part, FilePart)
        X, y = read_npz(part.path, limits)
        return Parsed(X, y, None, None, str(X.dtype)), part.sha256.hexdigest()
    arrays = []
    digest = hashlib.sha256()  # of X's bytes followed by y's
    for name in ("X", "y"):
        file_part = parts[name]
        assert isinstance(file_part, FilePart)
        with file_part.path.open("rb") as f:
            arrays.append(read_npy(f, name, limits))
            f.seek(0)
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return Parsed(arrays[0], arrays[1], None, None, str(arrays[0].dtype)), digest.hexdigest()


def _write_npz(path: Path, X: npt.NDArray[Any], y: npt.NDArray[Any],
               parsed: Parsed) -> None:
    names = parsed.feature_names or [f"x{i}" for i in range(X.shape[1])]
    with path.open("wb") as f:
        np.savez(f, X=X, y=y, feature_names=np.array(names, dtype=str),
                 target_name=np.array(parsed.target_name or "y", dtype=str))


def store_dataset(factory: Callable[[], Session], store: BlobStore, stack: ExitStack, *,
                  received: Received, principal: Principal, settings: Settings, name: str,
                  task: str, target: str | None) -> Dataset:
    """Validate the received upload, store its blob and row (committed); the new row."""
    limits = upload_limits(settings)
    parsed, sha256 = _parsed(received, target, limits)
    X, y, n_classes = check_arrays(parsed.X, parsed.y, task, limits)
    if X.shape[1] + (1 if y.ndim == 1 else y.shape[1]) > limits.max_columns:
        raise invalid(f"X and y have {X.shape[1]} + {y.shape[1]} columns; the limit "
                      f"GRADWATCH_MAX_UPLOAD_COLUMNS is {limits.max_columns}")
    staged = stack.enter_context(store.staging())
    _write_npz(staged, X, y, parsed)
    stored_bytes = staged.stat().st_size
    dataset_id = str(uuid.uuid4())
    row = Dataset(
        id=dataset_id, tenant=principal.tenant, name=name, task=task, format=received.format,
        n_samples=int(X.shape[0]), n_features=int(X.shape[1]), n_classes=n_classes,
        n_targets=1 if y.ndim == 1 else int(y.shape[1]), dtype=parsed.dtype,
        feature_names=parsed.feature_names, target_name=parsed.target_name, sha256=sha256,
        upload_bytes=sum(p.size for p in received.parts.values()), stored_bytes=stored_bytes,
        blob_key=blob_key(dataset_id), created_at=utcnow())
    with factory() as session:
        check_quota(session, principal, settings, stored_bytes)
        store.put(row.blob_key, staged)
        try:
            session.add(row)
            session.commit()
        except BaseException:
            store.delete(row.blob_key)
            raise
        session.refresh(row)
        session.expunge(row)
    return row


# --------------------------------------------------------------------------------------------
# Reading, listing, deleting
# --------------------------------------------------------------------------------------------


def get_dataset(session: Session, dataset_id: str, principal: Principal, *,
                lock: bool = False) -> Dataset:
    """The caller's data set, or 404 (also for another tenant's)."""
    query = select(Dataset).where(Dataset.id == dataset_id)
    if lock:  # PostgreSQL: a delete waits for submissions using it, and vice versa
        query = query.with_for_update(read=True)
    row = session.scalars(query).one_or_none()
    if row is None or not principal.can_see(row.tenant):
        raise NotFoundError(f"data set {dataset_id} does not exist (or was deleted)",
                            slug="dataset-not-found")
    return row


def dataset_to_read(row: Dataset) -> dict[str, Any]:
    return {
        "id": row.id, "source": "uploaded", "name": row.name, "task": row.task,
        "format": row.format, "n_samples": row.n_samples, "n_features": row.n_features,
        "n_classes": row.n_classes, "n_targets": row.n_targets, "dtype": row.dtype,
        "feature_names": row.feature_names, "target_name": row.target_name,
        "sha256": row.sha256, "upload_bytes": row.upload_bytes,
        "stored_bytes": row.stored_bytes, "created_at": as_utc(row.created_at),
        "tenant": row.tenant,
        "spec_data": {"source": "uploaded", "id": row.id},
    }


def _cursor(row: Dataset) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def list_datasets(session: Session, principal: Principal, *, limit: int,
                  after: tuple[datetime, str] | None) -> tuple[list[Dataset], str | None]:
    """The caller's uploaded data sets, newest first, and the next page's cursor."""
    query = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc())
    if not principal.is_admin:
        query = query.where(Dataset.tenant == principal.tenant)
    if after is not None:
        created, last_id = after
        if session.get_bind().dialect.name == "sqlite" and created.tzinfo is not None:
            created = created.replace(tzinfo=None)
        query = query.where((Dataset.created_at < created)
                            | ((Dataset.created_at == created) & (Dataset.id < last_id)))
    rows = list(session.scalars(query.limit(limit + 1)))
    next_cursor = _cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def delete_dataset(session: Session, dataset_id: str, principal: Principal) -> str:
    """Delete the row (the caller commits, then removes the returned blob key); 409 while a
    queued or running job trains on it."""
    row = session.scalars(select(Dataset).where(Dataset.id == dataset_id)
                          .with_for_update()).one_or_none()
    if row is None or not principal.can_see(row.tenant):
        raise NotFoundError(f"data set {dataset_id} does not exist (or was deleted)",
                            slug="dataset-not-found")
    users = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id,
                                                      Job.status.in_(_ACTIVE)).limit(5)))
    if users:
        raise ConflictError(f"data set {dataset_id} is used by queued or running job(s) "
                            f"{', '.join(users)}: cancel them or wait for them to finish",
                            slug="dataset-in-use", jobs=users)
    key = row.blob_key
    session.delete(row)
    return key


# --------------------------------------------------------------------------------------------
# Using a data set: in a spec, in training, in prediction
# --------------------------------------------------------------------------------------------


def uploaded_lookup(session: Session, principal: Principal
                    ) -> Callable[[str], UploadedShape | None]:
    """For spec validation (``context={"uploaded": ...}``): the shape of a data set the
    caller can see, None otherwise. Locks the row (PostgreSQL) until the caller commits, so
    that a concurrent delete cannot slip between validation and the job's insert."""

    def lookup(dataset_id: str) -> UploadedShape | None:
        try:
            row = get_dataset(session, dataset_id, principal, lock=True)
        except NotFoundError:
            return None
        return UploadedShape(task=row.task,  # type: ignore[arg-type]
                             n_samples=row.n_samples, n_features=row.n_features,
                             n_classes=row.n_classes, n_targets=row.n_targets)

    return lookup


def parent_lookup(session: Session, dataset_id: str | None
                  ) -> Callable[[str], UploadedShape | None]:
    """For a repair: the parent job's own data set and no other (whoever may repair the parent
    may use its data; a patch naming another data set is a 422)."""
    own = uploaded_lookup(session, ADMIN)

    def lookup(wanted: str) -> UploadedShape | None:
        return own(wanted) if dataset_id is not None and wanted == dataset_id else None

    return lookup


def read_blob_arrays(store: BlobStore, dataset_id: str
                     ) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any]]:
    """``(X, y)`` of a stored data set, read through the blob store (any machine)."""
    try:
        f = store.open(blob_key(dataset_id))
    except FileNotFoundError:
        raise RuntimeError(f"uploaded data set {dataset_id} is gone from the blob store (was "
                           "it deleted, or is GRADWATCH_BLOB_DIR not shared with this "
                           "worker?)") from None
    with f, np.load(f, allow_pickle=False) as npz:
        return npz["X"], npz["y"]


def load_dataset_arrays(session: Session, store: BlobStore, dataset_id: str,
                        principal: Principal) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any]]:
    """``(X, y)`` of a data set the caller can see (404 otherwise): for prediction."""
    get_dataset(session, dataset_id, principal)
    return read_blob_arrays(store, dataset_id)


def attach_uploaded_once(specs: list[TrainingSpec], store: BlobStore) -> None:
    """:func:`attach_uploaded` for a sweep group: each data set read once, its arrays shared
    by the members (read-only: the trainers copy what they standardise or shuffle)."""
    arrays: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[Any]]] = {}
    for spec in specs:
        if isinstance(spec.data, UploadedData):
            if spec.data.id not in arrays:
                arrays[spec.data.id] = read_blob_arrays(store, spec.data.id)
            spec.data.attach(*arrays[spec.data.id])


def attach_uploaded(spec: TrainingSpec, store: BlobStore) -> TrainingSpec:
    """Give an ``uploaded`` spec its arrays (workers, preflight); other specs pass through."""
    if isinstance(spec.data, UploadedData):
        X, y = read_blob_arrays(store, spec.data.id)
        spec.data.attach(X, y)
    return spec
