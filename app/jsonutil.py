"""JSON helpers for non-finite numbers: strings "NaN", "Infinity", "-Infinity" on the wire."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "encode_non_finite", "float_or_string"]


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
