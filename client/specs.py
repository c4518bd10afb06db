"""A spec (or a merge patch) as the client sends it: read from a JSON file when given a path,
and checked for what JSON cannot carry (the API takes finite numbers only)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["finite", "spec_body"]


def spec_body(spec: dict[str, Any] | str | Path) -> dict[str, Any]:
    """The spec to send: the dict itself, or the JSON file at a path; ValueError naming the
    file (and the field) for a file that is not JSON or a number that is not finite."""
    if isinstance(spec, str | Path):
        return finite(_read_json(Path(spec)), f"{spec}: ")
    return finite(spec)


def _read_json(path: Path) -> Any:
    """The JSON document in ``path`` (UTF-8, as RFC 8259 says; a byte-order mark is skipped);
    errors name the file."""
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not JSON: byte {data[exc.start]:#04x} at offset "
                         f"{exc.start} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise json.JSONDecodeError(f"{path} is not JSON: {exc.msg}", exc.doc, exc.pos
                                   ) from None


def finite(body: Any, where: str = "") -> Any:
    """``body`` when every number in it is finite, else ValueError naming the first one that
    is not (``optimizer.lr is inf``): JSON has no NaN or Infinity (httpx refuses to send
    them, naming nothing), and the API takes finite numbers only."""
    for path, value in _numbers(body, ()):
        if not math.isfinite(value):
            field = ".".join(map(str, path)) or "the value"
            overflow = " (a JSON number past ±1.8e308 reads as inf)" if math.isinf(value) else ""
            raise ValueError(f"{where}{field} is {value}, not a finite number: the API takes "
                             f"finite numbers only{overflow}")
    return body


def _numbers(value: Any, path: tuple[str | int, ...]) -> Any:
    if isinstance(value, float):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, (*path, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _numbers(item, (*path, i))
