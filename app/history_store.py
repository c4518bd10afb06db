"""The stored byte format of a job's history: the only code that knows it, for writing and reading.

A job's history is kept per job under a small integer key (``history_keys``) as

- **chunks** (``history_chunks``): one per flush, holding every series of a range of steps as
  compact columns. A job has ``S = 4 + 8 * n_layers`` series: the step metrics
  (:data:`STEP_METRICS`), then each layer's :data:`LAYER_METRICS`; :func:`series_index` maps
  (layer, metric) to a series, layer -1 being the step metrics.
- **rollups** (``history_rollups``): per aligned block of ``2**level`` steps (levels
  :data:`STORED_MIN_LEVEL` .. :data:`MAX_LEVEL`), every series' count, min, max and first
  non-finite point (:class:`app.summaries.Summary`), from which a downsampled read is
  answered without decoding the chunks it covers.

Chunk layout (little-endian): a 12-byte header: magic, codec, flags (bit 0: a presence bitmap
follows), ``n_layers`` (u16), ``n_steps`` (u32). The *head* is a mode byte per series (0 absent
throughout, 1 float32, 2 float64), steps and epochs as int32 deltas, ``clipped`` as bits and
the optional presence bitmap (series-major bits); a *float block* of some series is their
float32 values then their float64 values. A series is float32 only where that is bit-exact
(so NaN, +-Inf and every float64 value come back as they were); each float block is
column-major, XOR-ed with the previous value of its series and byte-shuffled, which is what
lets zstd find the slowly changing sign, exponent and leading mantissa bytes of a training
curve.

- ``b"GWH2"`` (codec 2, written now): ``n_layers + 2`` u32 frame lengths (bit 31: the frame
  is raw, else one zstd frame), then the frames: the head, the float block of the step
  metrics, then one float block per layer. A read of some layers decompresses only theirs.
- ``b"GWH1"`` (codec 0 raw, 1 zstd; the first columnar stores, still read): one body, the
  head then the float block of every series.

Rollup layout: per (level, block) one record of S int32 counts, S int32 offsets (from the
block's first step, -1: none) each for the min, max and first non-finite point, and S float64
min, max and non-finite values.

The chunks (:class:`StepColumns`, series numbering, encoding and decoding) are
:mod:`app.history_chunks`, re-exported here; this module adds the rollups and the writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.downsampling import MAX_LEVEL, RollupBlocks, RollupBuilder, Summary
from app.history_chunks import (
    ChunkData,
    StepColumns,
    decode_chunk,
    encode_chunk,
    n_series,
    recode_chunk,
    series_index,
)
from core.telemetry import StepRecord

__all__ = [
    "MAX_CHUNK_STEPS",
    "STORED_MIN_LEVEL",
    "Chunk",
    "ChunkData",
    "HistoryWriter",
    "StepColumns",
    "decode_chunk",
    "decode_rollups",
    "encode_chunk",
    "n_series",
    "recode_chunk",
    "series_index",
]

STORED_MIN_LEVEL = 8  # smallest stored rollup block: 256 steps (smaller ones cost more disk
# than they save time: a range that would use them is decoded from its chunks instead)


# --------------------------------------------------------------------------------------------
# Rollups
# --------------------------------------------------------------------------------------------


def _rollup_dtype(s: int) -> np.dtype[np.void]:
    return np.dtype([("count", "<i4", (s,)), ("min_off", "<i4", (s,)), ("max_off", "<i4", (s,)),
                     ("nf_off", "<i4", (s,)), ("min_value", "<f8", (s,)),
                     ("max_value", "<f8", (s,)), ("nf_value", "<f8", (s,))])


def _encode_rollups(blocks: RollupBlocks) -> list[tuple[int, int, bytes]]:
    """(level, block, bytes) of each completed block."""
    summary, s = blocks.summary, blocks.summary.n_series
    starts = blocks.block.astype(np.int64) << blocks.level
    table = np.zeros(len(blocks.block), dtype=_rollup_dtype(s))

    def offsets(step: np.ndarray) -> np.ndarray:
        return np.where(step >= 0, step - starts[:, None], -1)

    table["count"] = summary.count
    table["min_off"], table["min_value"] = offsets(summary.min_step), summary.min_value
    table["max_off"], table["max_value"] = offsets(summary.max_step), summary.max_value
    table["nf_off"], table["nf_value"] = offsets(summary.nf_step), summary.nf_value
    return [(blocks.level, int(b), table[i].tobytes())
            for i, b in enumerate(blocks.block.tolist())]


def decode_rollups(n_layers: int, rows: Sequence[tuple[int, int, bytes]],
                   series: Sequence[int]) -> Summary:
    """Summaries of ``series`` from stored (level, block, bytes) rows, one unit per row."""
    if not rows:
        return Summary.empty(len(series))
    dtype = _rollup_dtype(n_series(n_layers))
    table = np.frombuffer(b"".join(r[2] for r in rows), dtype=dtype)
    starts = np.fromiter((block << level for level, block, _ in rows), np.int64, len(rows))
    s_total = n_series(n_layers)
    stored = np.asarray(series, dtype=np.int64) < s_total  # unrecorded series: no points
    cols = np.where(stored, np.asarray(series, dtype=np.int64), 0)

    def steps(off: np.ndarray) -> np.ndarray:
        sel = off[:, cols].astype(np.int64)
        return np.where((sel >= 0) & stored, sel + starts[:, None], -1)

    return Summary(start=starts, count=table["count"][:, cols].astype(np.int64) * stored,
                   min_step=steps(table["min_off"]), min_value=table["min_value"][:, cols],
                   max_step=steps(table["max_off"]), max_value=table["max_value"][:, cols],
                   nf_step=steps(table["nf_off"]), nf_value=table["nf_value"][:, cols])


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


MAX_CHUNK_STEPS = 4096  # steps in one stored chunk (a flush of more is split)


@dataclass
class Chunk:
    """What one flush stores: a chunk (None without new steps) and the completed rollups."""

    n_layers: int
    first_step: int = 0
    last_step: int = 0
    n_steps: int = 0
    data: bytes | None = None
    rollups: list[tuple[int, int, bytes]] = field(default_factory=list)


class HistoryWriter:
    """Turns a run's step records, flush by flush, into chunks and completed rollup blocks."""

    def __init__(self, n_layers: int | None = None) -> None:
        self.n_layers = n_layers
        self._rollups: RollupBuilder | None = None

    def chunk(self, records: Sequence[StepRecord], *, final: bool = False) -> Chunk:
        """The chunk of ``records`` (in step order), closing every open block if ``final``."""
        if self.n_layers is None and records:
            self.n_layers = len(records[0].layers)
        cols = StepColumns.from_records(records, self.n_layers or 0) if records else None
        return self.chunk_columns(cols, final=final)

    def chunks_of(self, cols: StepColumns | None, *, final: bool = False) -> list[Chunk]:
        """:meth:`chunk_columns` over at most MAX_CHUNK_STEPS steps each: a read decodes whole
        chunks, so however much one flush holds, a page of history costs a bounded amount."""
        n = 0 if cols is None else len(cols)
        if cols is None or n <= MAX_CHUNK_STEPS:
            return [self.chunk_columns(cols, final=final)]
        return [self.chunk_columns(cols.part(a, a + MAX_CHUNK_STEPS),
                                   final=final and a + MAX_CHUNK_STEPS >= n)
                for a in range(0, n, MAX_CHUNK_STEPS)]

    def chunk_columns(self, cols: StepColumns | None, *, final: bool = False) -> Chunk:
        if cols is not None and self.n_layers is None:
            self.n_layers = cols.n_layers
        n_layers = self.n_layers or 0
        out = Chunk(n_layers)
        if self._rollups is None:
            self._rollups = RollupBuilder(n_series(n_layers), min_level=STORED_MIN_LEVEL)
        blocks: list[RollupBlocks] = []
        if cols is not None and len(cols):
            out.first_step, out.last_step = int(cols.steps[0]), int(cols.steps[-1])
            out.n_steps = len(cols)
            out.data = encode_chunk(cols)
            blocks = self._rollups.add(cols.steps, cols.values, cols.present)
        if final:
            blocks += self._rollups.finish()
        for b in blocks:
            out.rollups.extend(_encode_rollups(b))
        return out


assert MAX_LEVEL < 31  # block offsets fit the int32 of a rollup record
