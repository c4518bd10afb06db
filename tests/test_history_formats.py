"""The streamed JSON of a history page (numbers by orjson) parses to exactly what the stdlib
encoding of the same page (``app.jsonutil.dumps``, the earlier encoder) parses to: every float
bit for bit (-0.0, subnormals, 17-digit values), NaN/+-Inf as their strings, missing values as
null, whatever the block boundaries."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app import history_formats
from app.history_formats import HistoryPage, SeriesColumns, json_pieces
from app.jsonutil import dumps

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.sampled_from([0.0, -0.0, 5e-324, -2.2250738585072014e-308, 1e-5, 1e16,
                                    1.2345678901234568e17, 0.1, math.nan, math.inf, -math.inf]))


def same(a: Any, b: Any) -> bool:
    """Equal JSON values, floats compared by their bits."""
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, float | int) and isinstance(b, float | int)
                and struct.pack("<d", float(a)) == struct.pack("<d", float(b))
                and type(a) is type(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def page_of(kind: str, columns: list[SeriesColumns]) -> HistoryPage:
    page = HistoryPage(kind, "job-1", 1000, 0, 10, columns,  # type: ignore[arg-type]
                       points_in_range=3, next_cursor="abc")
    if kind == "metrics":
        page.epochs = {"epoch": [0], "val_loss": [math.nan]}
    return page


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(floats, st.booleans(), floats), min_size=0, max_size=40),
       st.sampled_from([3, 7, 8192]), st.booleans(), st.booleans())
def test_the_streamed_json_parses_to_the_stdlib_encodings_values(
        rows: list[tuple[float, bool, float]], block: int, with_presence: bool,
        gradients: bool) -> None:
    steps = np.arange(len(rows), dtype=np.int64) * 3
    a = np.array([r[0] for r in rows], dtype=np.float64)
    b = np.array([r[2] for r in rows], dtype=np.float64)
    present = np.array([not r[1] for r in rows], dtype=bool) if with_presence else None
    layer = 0 if gradients else None
    cols = [SeriesColumns(layer, "grad_norm", steps, a, present),
            SeriesColumns(layer, "act_mean", steps, b),  # no presence: all present
            SeriesColumns(layer, "dead_fraction", steps, b, np.zeros(len(rows), dtype=bool))]
    page = page_of("gradients" if gradients else "metrics", cols)
    old_block = history_formats._BLOCK
    history_formats._BLOCK = block  # block boundaries anywhere
    try:
        body = b"".join(json_pieces(page))
    finally:
        history_formats._BLOCK = old_block
    assert same(json.loads(body), json.loads(dumps(page.as_dict())))


def test_non_finite_and_missing_values_are_the_documented_tokens() -> None:
    steps = np.array([1, 2, 3, 4, 5])
    values = np.array([math.nan, math.inf, -math.inf, -0.0, 1e-5])
    present = np.array([True, True, True, True, False])
    page = page_of("metrics", [SeriesColumns(None, "loss", steps, values, present)])
    body = json.loads(b"".join(json_pieces(page)))
    got = body["series"]["loss"]
    assert got["steps"] == [1, 2, 3, 4, 5]
    assert got["values"][:3] == ["NaN", "Infinity", "-Infinity"]
    assert struct.pack("<d", got["values"][3]) == struct.pack("<d", -0.0)
    assert got["values"][4] is None
    assert body["epochs"]["val_loss"] == ["NaN"]
