"""Bounded checks on raw input at the edge, before anything expensive looks at it.

* JSON nesting depth, measured on the raw bytes before parsing (a 1,500-deep array would
  otherwise recurse in the parser);
* NUL characters, in bodies, paths and query strings (PostgreSQL text cannot hold them);
* inline data: every value counted against the inline limit (``X`` and ``y``) and every
  leaf checked to be a JSON number before the spec is validated, so a body of a million
  strings gets one error, not three per element.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from app.errors import SpecValidationError

__all__ = ["MAX_JSON_DEPTH", "check_inline_data", "check_json_depth", "check_no_nul",
           "json_depth"]

MAX_JSON_DEPTH = 32  # a spec nests about 6 deep; inline X is 3 deep

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``raw`` (strings skipped);
    linear time, in C and NumPy."""
    brackets = _STRING.sub(b'""', raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _reject(loc: list[Any], msg: str, type_: str, slug: str = "validation-error",
            **extra: Any) -> SpecValidationError:
    return SpecValidationError(f"{'.'.join(str(p) for p in loc)}: {msg}", slug=slug,
                               errors=[{"loc": loc, "msg": msg, "type": type_}], **extra)


def check_json_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    depth = json_depth(raw)
    if depth > limit:
        raise _reject(["body"], f"JSON nested {depth} deep; the limit is {limit}",
                      "limit_exceeded", slug="limit-exceeded", limit=limit, value=depth)


def check_no_nul(raw: bytes) -> None:
    """JSON can carry NUL only as the escape ``\\u0000``."""
    if b"\\u0000" in raw:
        raise _reject(["body"], "NUL characters (\\u0000) are not allowed in strings",
                      "string_nul")


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def check_inline_data(body: Any, *, max_values: int, loc: tuple[str | int, ...]) -> None:
    """For ``data.source == "inline"``: count ``X`` and ``y`` against ``max_values`` and check
    that their leaves are numbers, reporting the first offender only."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or data.get("source") != "inline":
        return
    base = [*loc, "data"]
    count = 0
    for name in ("X", "y"):
        rows = data.get(name)
        if not isinstance(rows, list):
            continue  # missing or mistyped: the spec's own validation says so
        for i, row in enumerate(rows):
            if isinstance(row, list):
                count += len(row)
                for j, value in enumerate(row):
                    if not _is_number(value):
                        raise _reject([*base, name, i, j], "must be a number", "float_type")
            elif name == "y" and _is_number(row):
                count += 1
            else:
                want = "a list of numbers" if name == "X" else "a number or a list of numbers"
                raise _reject([*base, name, i], f"must be {want}", "list_type")
            if count > max_values:
                break
        if count > max_values:
            raise _reject([*base, name], f"inline X and y hold more than {max_values} values "
                          "(GRADWATCH_MAX_INLINE_VALUES)", "limit_exceeded",
                          slug="limit-exceeded", limit=max_values)
