"""JSON helpers for non-finite numbers: strings "NaN", "Infinity", "-Infinity" on the wire."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

__all__ = ["dumps", "encode_non_finite", "float_or_string", "in_blocks", "iter_json"]


def float_or_string(value: float) -> float | str:
    """``value``, or its protobuf-JSON string when it is NaN or +-Inf."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def encode_non_finite(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, floats) with non-finite floats as strings."""
    if isinstance(obj, float):
        return float_or_string(obj)
    if isinstance(obj, dict):
        return {k: encode_non_finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode_non_finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON; never emits the non-standard NaN/Infinity tokens."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(encode_non_finite(obj), separators=(",", ":"), allow_nan=False,
                          default=str)


def iter_json(obj: Any, depth: int = 8) -> Iterator[bytes]:
    """``obj`` as compact JSON (non-finite numbers as strings), in pieces: dicts, and lists of
    dicts or lists, down to ``depth`` levels are emitted member by member (a list of numbers
    is one piece), so a large response is never one string in memory."""
    if depth > 0 and isinstance(obj, dict):
        yield b"{"
        for i, (key, value) in enumerate(obj.items()):
            yield (b"," if i else b"") + json.dumps(str(key)).encode() + b":"
            yield from iter_json(value, depth - 1)
        yield b"}"
    elif depth > 0 and isinstance(obj, list) and obj and isinstance(obj[0], dict | list):
        yield b"["
        for i, value in enumerate(obj):
            if i:
                yield b","
            yield from iter_json(value, depth - 1)
        yield b"]"
    else:
        yield dumps(obj).encode()


def in_blocks(pieces: Iterator[bytes], size: int = 1 << 16) -> Iterator[bytes]:
    """``pieces`` joined into blocks of about ``size`` bytes: a streamed response costs a
    thread hop per block it sends, not per series."""
    block: list[bytes] = []
    length = 0
    for piece in pieces:
        block.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(block)
            block, length = [], 0
    if block:
        yield b"".join(block)
