"""A history response as data (:class:`HistoryPage`: NumPy columns and what the read did) and
its encodings: the JSON of the OpenAPI schema and an Apache Arrow IPC stream, both produced
piece by piece, so a large page is never one string (or one buffer) in memory.

JSON: each series is ``{"steps": [...], "values": [...]}``; NaN/±Inf are the strings
``"NaN"``/``"Infinity"``/``"-Infinity"``, a missing statistic is ``null``.

Arrow (``application/vnd.apache.arrow.stream``): one table, a ``step`` column (int64) and one
float64 column per series (``loss``, ``grad_norm``, ...; per layer ``layers.{i}.{metric}``,
field metadata ``layer`` and ``metric``). A null means the series has no value at that step
(a statistic that does not apply, or, in a downsampled read, a step the downsampling did not
keep for that series); NaN, ±Inf and -0.0 are the stored float64 bits. The schema metadata
``gradwatch`` holds the rest of the response as JSON (job id, range, sampling, next cursor,
and for metrics the epoch figures on the first page).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa

from app.jsonutil import dumps, float_or_string

__all__ = ["ARROW_STREAM", "HistoryPage", "SeriesColumns", "arrow_stream", "json_pieces"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_BLOCK = 8192  # values per JSON piece
_BATCH_VALUES = 1 << 20  # values per Arrow record batch (8 MiB of float64)


@dataclass(frozen=True)
class SeriesColumns:
    """One series: ``values[i]`` was recorded at ``steps[i]``; ``present[i]`` False marks a
    missing value (None: all present)."""

    layer: int | None
    metric: str
    steps: np.ndarray
    values: np.ndarray
    present: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.metric if self.layer is None else f"layers.{self.layer}.{self.metric}"

    def values_list(self, a: int = 0, b: int | None = None) -> list[float | None]:
        vals: list[float | None] = self.values[a:b].tolist()
        if self.present is not None:
            present = self.present[a:b]
            if not present.all():
                vals = [v if p else None for v, p in zip(vals, present.tolist(), strict=True)]
        return vals

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps.tolist(), "values": self.values_list()}


@dataclass
class HistoryPage:
    """One history response: the series (layer-major for gradients) and what the read did."""

    kind: Literal["gradients", "metrics"]
    job_id: str
    max_points: int
    start_step: int | None = None
    end_step: int | None = None
    columns: list[SeriesColumns] = field(default_factory=list)
    downsampled: bool = False
    bucket_size: int | None = None
    points_in_range: int = 0
    next_cursor: str | None = None
    epochs: dict[str, list[Any]] | None = None  # metrics only

    def sampling(self) -> dict[str, Any]:
        return {"downsampled": self.downsampled,
                "method": "minmax-buckets" if self.downsampled else None,
                "bucket_size": self.bucket_size if self.downsampled else None,
                "max_points": self.max_points, "points_in_range": self.points_in_range,
                "next_cursor": self.next_cursor}

    def head(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "start_step": self.start_step, "end_step": self.end_step}

    def layers(self) -> list[tuple[int, list[SeriesColumns]]]:
        """The columns grouped by layer, in order."""
        out: list[tuple[int, list[SeriesColumns]]] = []
        for col in self.columns:
            assert col.layer is not None
            if not out or out[-1][0] != col.layer:
                out.append((col.layer, []))
            out[-1][1].append(col)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The response as Python objects (lists; non-finite floats left as floats)."""
        out = self.head()
        if self.kind == "gradients":
            out["layers"] = [{"layer": ly, "series": {c.metric: c.as_dict() for c in cols}}
                             for ly, cols in self.layers()]
        else:
            out["series"] = {c.metric: c.as_dict() for c in self.columns}
            out["epochs"] = self.epochs
        return {**out, **self.sampling()}


# ------------------------------------------------------------------------------------ JSON

def _numbers_json(values: np.ndarray) -> bytes:
    """The JSON of finite numbers (int or float64 array) without the brackets: shortest
    round-trip forms, so each parses to the same float64 bits as Python's ``repr``."""
    return orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]


def _values_json(values: np.ndarray, present: np.ndarray | None) -> bytes:
    """The JSON of one block of a series' values (no brackets): NaN/+-Inf as their strings,
    a missing value as ``null``."""
    values = values.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if present is None or present.all():
        if finite.all():
            return _numbers_json(values)
        special = np.flatnonzero(~finite)
    elif not present.any():
        return b",".join([b"null"] * len(values))
    else:
        special = np.flatnonzero(~(finite & present))
    listed: list[float | str | None] = values.tolist()
    for i in special.tolist():
        listed[i] = float_or_string(values[i]) if present is None or present[i] else None
    return orjson.dumps(listed)[1:-1]


class _StepsJSON:
    """The JSON of a steps array, block by block, encoded once for all the series that
    share it (every series of a full-resolution read)."""

    def __init__(self) -> None:
        self._of: tuple[np.ndarray, list[bytes]] | None = None

    def blocks(self, steps: np.ndarray) -> list[bytes]:
        if self._of is None or self._of[0] is not steps:
            self._of = (steps, [_numbers_json(steps[a:a + _BLOCK])
                                for a in range(0, len(steps), _BLOCK)])
        return self._of[1]


def _json_series(col: SeriesColumns, steps_json: _StepsJSON) -> Iterator[bytes]:
    yield b'{"steps":[' + b",".join(steps_json.blocks(col.steps)) + b'],"values":['
    present = col.present
    for a in range(0, len(col.steps), _BLOCK):
        block = _values_json(col.values[a:a + _BLOCK],
                             None if present is None else present[a:a + _BLOCK])
        yield (b"," if a else b"") + block
    yield b"]}"


def _json_series_map(cols: list[SeriesColumns], steps_json: _StepsJSON) -> Iterator[bytes]:
    yield b"{"
    for i, col in enumerate(cols):
        yield (b"," if i else b"") + json.dumps(col.metric).encode() + b":"
        yield from _json_series(col, steps_json)
    yield b"}"


def json_pieces(page: HistoryPage) -> Iterator[bytes]:
    """``page`` as the JSON of the OpenAPI schema, a few KiB at a time."""
    yield dumps(page.head())[:-1].encode()
    steps_json = _StepsJSON()
    if page.kind == "gradients":
        yield b',"layers":['
        for i, (layer, cols) in enumerate(page.layers()):
            yield (b"," if i else b"") + b'{"layer":' + str(layer).encode() + b',"series":'
            yield from _json_series_map(cols, steps_json)
            yield b"}"
        yield b"]"
    else:
        yield b',"series":'
        yield from _json_series_map(page.columns, steps_json)
        yield b',"epochs":' + dumps(page.epochs).encode()
    yield b"," + dumps(page.sampling())[1:].encode()


# ----------------------------------------------------------------------------------- Arrow

class _Pieces:
    """A write-only file object that keeps what the Arrow writer wrote until it is taken."""

    closed = False

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data: Any) -> int:
        self._pieces.append(bytes(data))
        return len(self._pieces[-1])

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self._pieces = b"".join(self._pieces), []
        return out


def _aligned(page: HistoryPage) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray | None]]]:
    """The steps of the table and each series' values and validity on them."""
    cols = page.columns
    if not cols:
        return np.empty(0, np.int64), []
    if all(c.steps is cols[0].steps for c in cols):  # a full-resolution read: shared steps
        return cols[0].steps, [(c.values, c.present) for c in cols]
    steps = np.unique(np.concatenate([c.steps for c in cols]))
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for c in cols:
        where = np.searchsorted(steps, c.steps)
        values = np.zeros(len(steps))
        values[where] = c.values
        valid = np.zeros(len(steps), dtype=bool)
        valid[where] = True if c.present is None else c.present
        out.append((values, valid))
    return steps, out


def _schema(page: HistoryPage) -> pa.Schema:
    meta = {**page.head(), "kind": page.kind, **page.sampling()}
    if page.kind == "metrics":
        meta["epochs"] = page.epochs
    fields = [pa.field("step", pa.int64(), nullable=False)]
    for c in page.columns:
        info = {"metric": c.metric, **({"layer": str(c.layer)} if c.layer is not None else {})}
        fields.append(pa.field(c.name, pa.float64(), metadata=info))
    return pa.schema(fields, metadata={"gradwatch": dumps(meta)})


def arrow_stream(page: HistoryPage) -> Iterator[bytes]:
    """``page`` as an Arrow IPC stream: the schema, then record batches of about 1M values."""
    schema = _schema(page)
    steps, series = _aligned(page)
    rows = max(1024, _BATCH_VALUES // max(1, len(series)))
    sink = _Pieces()
    with pa.ipc.new_stream(sink, schema) as writer:
        yield sink.take()
        for a in range(0, len(steps), rows):
            arrays = [pa.array(steps[a:a + rows], pa.int64())]
            for values, valid in series:
                block = np.ascontiguousarray(values[a:a + rows], dtype=np.float64)
                mask = None if valid is None else ~valid[a:a + rows]
                arrays.append(pa.array(block, pa.float64(), mask=mask))
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            yield sink.take()
    yield sink.take()
