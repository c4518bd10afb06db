"""A job's input: validation at the edge (limits, memory budget), the echoed spec, its hash,
and preflight. The request model is :class:`core.spec.TrainingSpec` itself."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from app.errors import SpecValidationError, validation_errors
from app.input_guard import check_inline_data
from app.settings import Settings
from core.spec import TrainingSpec, UploadedShape

__all__ = ["check_memory_budget", "echoed_spec", "preflight_spec", "spec_hash", "validate_spec"]




def _none(dataset_id: str) -> UploadedShape | None:
    return None


def validate_spec(body: Any, settings: Settings, *, loc_prefix: tuple[str | int, ...] = ("body",),
                  uploaded: Callable[[str], UploadedShape | None] | None = None
                  ) -> TrainingSpec:
    """The validated spec, or a 422 naming each bad field (the first 50; and any exceeded
    limit). ``uploaded`` finds the data sets the caller may use (app.datasets.uploaded_lookup);
    without it, a spec naming one must carry the data set's shape itself."""
    if not isinstance(body, dict):
        raise SpecValidationError(
            "the request body must be a JSON object (a TrainingSpec)",
            errors=[{"loc": list(loc_prefix), "msg": "expected a JSON object", "type": "dict_type"}])
    check_inline_data(body, max_values=settings.max_inline_values, loc=loc_prefix)
    try:
        spec = TrainingSpec.model_validate(body, context={"limits": settings.spec_limits(),
                                                          "uploaded": uploaded or _none})
    except ValidationError as exc:
        total = exc.error_count()
        errors = validation_errors(exc.errors(include_url=False), loc_prefix)
        limits = [e for e in errors if e["type"] == "limit_exceeded"]
        first = (limits or errors)[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {total - 1} more)" if total > 1 else ""
        raise SpecValidationError(
            f"{where}: {first['msg']}{more}",
            slug="limit-exceeded" if limits else "validation-error",
            errors=errors, errors_total=total) from None
    check_memory_budget(spec, settings, loc_prefix=loc_prefix)
    return spec


# The probe pass of a preflight allocates the spec's network in the API process: at most two
# at a time, each at most GRADWATCH_PREFLIGHT_PROBE_MAX_BYTES.
_PROBES = threading.BoundedSemaphore(2)


def preflight_spec(spec: TrainingSpec, settings: Settings) -> Any:
    """The preflight report of ``spec``, probed when it is small enough (see settings)."""
    from core.diagnostics import preflight

    if preflight(spec, probe=False).memory_bytes > settings.preflight_probe_max_bytes:
        return preflight(spec, probe=False)
    with _PROBES:
        return preflight(spec, probe=True)


def check_memory_budget(spec: TrainingSpec, settings: Settings, *,
                        loc_prefix: tuple[str | int, ...] = ("body",)) -> None:
    """422 when preflight's memory estimate of ``spec`` exceeds the job memory budget."""
    from core.diagnostics import preflight

    estimate = preflight(spec, probe=False).memory_bytes
    limit = settings.max_job_memory_bytes
    if estimate > limit:
        msg = (f"the job needs about {estimate / 2**20:,.0f} MiB by preflight's estimate; the "
               f"limit is {limit / 2**20:,.0f} MiB (GRADWATCH_MAX_JOB_MEMORY_BYTES)")
        raise SpecValidationError(msg, slug="limit-exceeded", limit=limit, value=estimate,
                                  errors=[{"loc": list(loc_prefix), "msg": msg,
                                           "type": "limit_exceeded"}])


def echoed_spec(spec: TrainingSpec) -> dict[str, Any]:
    """The spec with every default filled in (absent optionals explicit null)."""
    data: dict[str, Any] = spec.model_dump(mode="json")
    return data


def spec_hash(spec_json: dict[str, Any]) -> str:
    canonical = json.dumps(spec_json, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
