"""RFC 7396 JSON merge patches: apply one, and compute the one that turns a document into another.

A recommendation's ``spec_patch`` is produced by :func:`create_merge_patch` between the job's
spec and the repaired spec (both ``model_dump(mode="json")``), so applying it with
:func:`apply_merge_patch` and re-validating gives exactly the repaired spec.
"""

from __future__ import annotations

import copy
import math
from typing import Any

__all__ = ["apply_merge_patch", "copy_json", "create_merge_patch", "same_json"]

_SCALARS = (str, int, float, bool, type(None))


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON document (dicts, lists, scalars): ``copy.deepcopy`` without its
    bookkeeping (anything else is deep-copied as such)."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    if isinstance(value, _SCALARS):
        return value
    return copy.deepcopy(value)


def same_json(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same JSON document: same types (``1``, ``1.0`` and ``True``
    differ), same key order, same float bits' values (``-0.0`` differs from ``0.0``; NaN
    never matches)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return isinstance(a, _SCALARS) and bool(a == b)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Return ``target`` with the RFC 7396 merge ``patch`` applied (inputs are not modified).

    An object patch merges key by key (``null`` deletes the key); anything else, arrays
    included, replaces the target whole.
    """
    if not isinstance(patch, dict):
        return copy_json(patch)
    result: dict[str, Any] = copy_json(target) if isinstance(target, dict) else {}
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
    for key in source:  # removed keys in the source's order (a set's order varies by process)
        if key not in target:
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
