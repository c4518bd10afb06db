"""RFC 7396 JSON merge patches: apply one, and compute the one that turns a document into another.

A recommendation's ``spec_patch`` is produced by :func:`create_merge_patch` between the job's
spec and the repaired spec (both ``model_dump(mode="json")``), so applying it with
:func:`apply_merge_patch` and re-validating gives exactly the repaired spec.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["apply_merge_patch", "create_merge_patch"]


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Return ``target`` with the RFC 7396 merge ``patch`` applied (inputs are not modified).

    An object patch merges key by key (``null`` deletes the key); anything else, arrays
    included, replaces the target whole.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def create_merge_patch(source: Any, target: Any) -> Any:
    """The smallest RFC 7396 merge patch taking ``source`` to ``target``.

    ``target`` must not hold ``null`` values inside objects (a merge patch cannot set a
    member to null; it deletes it): validated specs fill such defaults back in.
    """
    if not isinstance(source, dict) or not isinstance(target, dict):
        return copy.deepcopy(target)
    patch: dict[str, Any] = {}
    for key in source.keys() - target.keys():
        patch[key] = None
    for key, value in target.items():
        if key not in source:
            patch[key] = _strip_nulls(value)
        elif source[key] != value:
            if value is None:
                patch[key] = None
            elif isinstance(value, dict) and isinstance(source[key], dict):
                patch[key] = create_merge_patch(source[key], value)
            else:
                patch[key] = _strip_nulls(value)
    return patch


def _strip_nulls(value: Any) -> Any:
    # Nulls inside a new object would delete nothing and be dropped by the merge: leave them out.
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return copy.deepcopy(value)
