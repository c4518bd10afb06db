"""A fix as an RFC 7396 merge patch of the job's spec, and the recommendation that carries it.

:func:`spec_patch` edits the validated spec as JSON and diffs
(:func:`core.diagnostics.patch.create_merge_patch`), keeping the patch only if applying it and
re-validating gives exactly the edited spec; :func:`recommendation` wraps a patch with its
rationale (None when there is no valid patch), and :func:`round_significant` rounds the values
a patch sets. Used by :mod:`core.diagnostics.recommend` and :mod:`core.diagnostics.spike_fixes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from core.diagnostics.patch import apply_merge_patch, copy_json, create_merge_patch, same_json
from core.diagnostics.report import Action, Recommendation
from core.spec import TrainingSpec

__all__ = [
    "recommendation",
    "round_significant",
    "spec_patch",
]


def round_significant(x: float, digits: int = 2) -> float:
    """Round to ``digits`` significant digits (values that read well in a spec)."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def spec_patch(spec: TrainingSpec, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """The merge patch taking ``spec`` to ``edit(spec as JSON)``, or None if invalid/no-op."""
    source = spec.model_dump(mode="json")
    target = copy_json(source)
    edit(target)
    try:
        repaired = TrainingSpec.model_validate(target)
    except ValidationError:
        return None
    repaired_json = repaired.model_dump(mode="json")
    patch = create_merge_patch(source, repaired_json)
    if not isinstance(patch, dict) or not patch:
        return None
    patched = apply_merge_patch(source, patch)
    if same_json(patched, target):  # validates to ``repaired`` again: nothing to check
        return patch
    try:
        check = TrainingSpec.model_validate(patched)
    except ValidationError:  # pragma: no cover - create_merge_patch guarantees this
        return None
    if check.model_dump(mode="json") != repaired_json:
        return None
    return patch


def recommendation(action: Action, rationale: str, patch: dict[str, Any] | None,
         effect: str | None = None) -> Recommendation | None:
    if patch is None:
        return None
    return Recommendation(action=action, rationale=rationale, spec_patch=patch,
                          expected_effect=effect)
