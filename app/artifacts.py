"""A job's trained models in the blob store: ``models/<job id>/final.npz`` (and ``best.npz``).

The worker that ends a run (:mod:`app.worker`, :mod:`app.sweep_worker`) keeps the model with
:func:`keep_models` before the job's terminal move, so a client that sees the job finished can
download it. The key derives from the job id: no database column, and a job that is deleted
loses its models once the deleting transaction commits (:func:`forget_models` in the unit of
work, :class:`ModelCleanup` after the commit, as :mod:`app.dispatch` sends job ids).
The file format is core's (:mod:`core.model_io`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from app.blobstore import BlobStore, blob_store
from app.db import AfterCommit
from app.settings import Settings
from core.model_io import Model, load_model, read_info

__all__ = ["MODEL_KINDS", "ModelCleanup", "Which", "forget_models", "iter_blob", "keep_models",
           "keep_trainer_models",
           "model_key", "open_model", "read_model", "read_model_info", "store_model"]

log = logging.getLogger(__name__)

Which = Literal["final", "best"]
MODEL_KINDS: tuple[Which, ...] = ("final", "best")
_PENDING = "gradwatch.forget_models"


def model_key(job_id: str, which: Which = "final") -> str:
    if which not in MODEL_KINDS:
        raise ValueError(f"which must be one of {MODEL_KINDS}, not {which!r}")
    return f"models/{job_id}/{which}.npz"


def store_model(store: BlobStore, job_id: str, model: Model, which: Which = "final") -> int:
    """Write ``model`` under the job's key (atomically, replacing an older one); its size."""
    with store.staging() as staged:
        with staged.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
            model.save(f)
        return store.put(model_key(job_id, which), staged)


def keep_models(settings: Settings, job_id: str, final: Callable[[], Model] | None,
                best: Callable[[], Model | None] | None = None) -> None:
    """Store a finished run's final (and best) model; never raises: a model that cannot be
    kept is logged, and the job still finishes (its model is then a 404)."""
    store = blob_store(settings)
    for which, build in (("final", final), ("best", best)):
        if build is None:
            continue
        try:
            model = build()
            if model is not None:
                store_model(store, job_id, model, which)  # type: ignore[arg-type]
        except Exception:
            log.exception("job %s: could not keep its %s model", job_id, which)


def keep_trainer_models(settings: Settings, job_id: str, trainer: Any, **info: Any) -> None:
    """:func:`keep_models` for a :class:`core.Trainer`: its final parameters, and the best
    by validation loss when it kept them."""
    keep_models(settings, job_id,
                lambda: Model.from_trainer(trainer, job_id=job_id, **info),
                (lambda: Model.from_trainer(trainer, "best", job_id=job_id))
                if getattr(trainer, "best", None) is not None else None)


def open_model(store: BlobStore, job_id: str, which: Which) -> Any:
    """The model file, open for reading; FileNotFoundError when there is none."""
    return store.open(model_key(job_id, which))


def read_model_info(store: BlobStore, job_id: str, which: Which) -> dict[str, Any] | None:
    """The model's info (``finite``, ``task``, ...) without its parameters; None if none."""
    try:
        with open_model(store, job_id, which) as f:
            return read_info(f)
    except FileNotFoundError:
        return None


def read_model(store: BlobStore, job_id: str, which: Which) -> Model | None:
    try:
        with open_model(store, job_id, which) as f:
            return load_model(f)
    except FileNotFoundError:
        return None


def iter_blob(f: Any, block: int = 1 << 20) -> Iterator[bytes]:
    """An open blob's bytes, a block at a time; closes it at the end."""
    with f:
        while data := f.read(block):
            yield data


# --------------------------------------------------------------------------------------------
# Deleting a job deletes its models, after the deleting transaction committed
# --------------------------------------------------------------------------------------------


def forget_models(session: Session, job_id: str) -> None:
    """Delete ``job_id``'s models once ``session``'s transaction has committed."""
    AfterCommit.queue(session, _PENDING, job_id)


class ModelCleanup:
    """Deletes the models of jobs deleted by committed transactions of ``factory``."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.store = blob_store(settings)
        self._after_commit = AfterCommit(factory, _PENDING, self.delete)

    def install(self) -> None:
        self._after_commit.install()

    def uninstall(self) -> None:
        self._after_commit.uninstall()

    def delete(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            for which in MODEL_KINDS:
                try:
                    self.store.delete(model_key(job_id, which))
                except OSError:
                    log.exception("job %s: could not delete its %s model", job_id, which)
