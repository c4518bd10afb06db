"""The data scale of a job on an uploaded data set, for diagnoses computed in the API process.

The worker diagnoses a run with the data set's arrays attached to its spec, so the diagnosis
knows the data's scale and chance-level loss (:mod:`core.diagnostics.reference`). The API's
spec of the same job has no arrays; here they are read through the blob store exactly as the
worker reads them, measured once per data set and the spec fields the scale depends on
(data sets are immutable), and only the small result is kept (bounded, least recently used
first out; concurrent readers share one load). A data set that is gone gives no scale, and
no error: the diagnosis goes on without it, as before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.blobstore import blob_store
from app.datasets import attach_uploaded
from app.diagnosis_cache import SingleFlightCache
from app.settings import Settings
from core.spec import TrainingSpec, UploadedData

if TYPE_CHECKING:
    from core.diagnostics.reference import DataScale

__all__ = ["SCALES", "uploaded_scale"]

log = logging.getLogger(__name__)

SCALES = SingleFlightCache(size=128)


def uploaded_scale(spec: TrainingSpec, settings: Settings) -> DataScale | None:
    """The data scale of ``spec``'s uploaded data set as the worker measures it; None for any
    other spec (core measures those itself), or when the data set cannot be read."""
    if not isinstance(spec.data, UploadedData):
        return None
    from core.diagnostics.reference import data_scale, scale_key  # only where diagnoses run

    key = ("uploaded", scale_key(spec))

    def measure() -> DataScale | None:
        probe = spec.model_copy(deep=True)  # the caller's spec stays without arrays
        try:
            attach_uploaded(probe, blob_store(settings))
        except RuntimeError:  # gone from the blob store (deleted): it stays gone
            return None
        return data_scale(probe)

    try:
        result: DataScale | None = SCALES.get(key, measure)
    except Exception:  # the blob store failing now: no scale this time, not cached
        log.exception("uploaded data set %s: could not measure its scale", spec.data.id)
        return None
    return result
