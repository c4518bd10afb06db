"""History chunks: a range of recorded steps as columns, and the bytes one chunk is stored as.

:class:`StepColumns` holds consecutive steps as arrays in series order (:func:`n_series`,
:func:`series_index`); :func:`encode_chunk` writes them as one chunk (GWH2, or the GWH1 of the
first columnar stores), :func:`decode_chunk` reads any stored chunk back bit for bit (only the
requested series' frames), :func:`recode_chunk` converts between the two. The layout is
described in :mod:`app.history_store`, which adds the rollups and the writer and re-exports
these names.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import attrgetter

import numpy as np
import zstandard

from app.downsampling import LAYER_METRICS, STEP_METRICS
from core.telemetry import LAYER_FIELDS, STEP_FIELDS, StepBlock, StepRecord

__all__ = [
    "ChunkData",
    "StepColumns",
    "decode_chunk",
    "encode_chunk",
    "n_series",
    "recode_chunk",
    "series_index",
]


_MAGIC, _MAGIC2 = b"GWH1", b"GWH2"  # GWH1: one body; GWH2: a frame per layer (written now)
_HEADER = struct.Struct("<4sBBHI")
_CODEC_RAW, _CODEC_ZSTD, _CODEC_FRAMES = 0, 1, 2
_RAW_FRAME = 1 << 31  # a GWH2 frame length with this bit set: the frame is stored raw
_ABSENT, _F32, _F64 = 0, 1, 2
_ZSTD_LEVEL = 1  # level 3..12 gain < 1 % on noisy float64 statistics and cost up to 3x the time
# zstandard's (de)compressor objects must not be used by two threads at once, and the API
# decodes chunks in its thread pool: one pair per thread.
_codecs = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    found: zstandard.ZstdCompressor | None = getattr(_codecs, "compressor", None)
    if found is None:
        found = _codecs.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found: zstandard.ZstdDecompressor | None = getattr(_codecs, "decompressor", None)
    if found is None:
        found = _codecs.decompressor = zstandard.ZstdDecompressor()
    return found


_layer_values = attrgetter(*LAYER_METRICS)
_step_values = attrgetter(*STEP_METRICS)


def n_series(n_layers: int) -> int:
    """How many series a job with ``n_layers`` layers stores."""
    return len(STEP_METRICS) + len(LAYER_METRICS) * n_layers


def series_index(layer: int, metric: int) -> int:
    """The series of ``metric`` (an index into LAYER_METRICS, or STEP_METRICS for layer -1)."""
    if layer < 0:
        return metric
    return len(STEP_METRICS) + layer * len(LAYER_METRICS) + metric


# --------------------------------------------------------------------------------------------
# Columns of a range of steps
# --------------------------------------------------------------------------------------------


@dataclass
class StepColumns:
    """Consecutive recorded steps as arrays: ``values`` and ``present`` are ``(n, S)``."""

    n_layers: int
    steps: np.ndarray
    epochs: np.ndarray
    clipped: np.ndarray
    values: np.ndarray
    present: np.ndarray

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def part(self, a: int, b: int) -> StepColumns:
        """Rows ``a:b`` (views, no copy)."""
        return StepColumns(self.n_layers, self.steps[a:b], self.epochs[a:b], self.clipped[a:b],
                           self.values[a:b], self.present[a:b])

    @classmethod
    def from_block(cls, block: StepBlock) -> StepColumns:
        """The trainer's block of emitted steps (the same column order): no copy."""
        return cls(block.n_layers, block.steps, block.epochs, block.clipped, block.values,
                   block.present)

    @staticmethod
    def concat(parts: Sequence[StepColumns]) -> StepColumns:
        """Columns of consecutive ranges, in step order."""
        if len(parts) == 1:
            return parts[0]
        cols = StepColumns(parts[0].n_layers, *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("steps", "epochs", "clipped", "values", "present")))
        if np.any(np.diff(cols.steps) < 0):
            order = np.argsort(cols.steps, kind="stable")
            cols = StepColumns(cols.n_layers, cols.steps[order], cols.epochs[order],
                               cols.clipped[order], cols.values[order], cols.present[order])
        return cols

    @classmethod
    def from_records(cls, records: Sequence[StepRecord], n_layers: int) -> StepColumns:
        """The records' figures; a ``None`` statistic is a missing value (``present`` False)."""
        n = len(records)
        if any(len(r.layers) != n_layers for r in records):
            raise ValueError(f"every step record must have {n_layers} layers")
        steps = np.fromiter((r.step for r in records), np.int64, n)
        epochs = np.fromiter((r.epoch for r in records), np.int64, n)
        clipped = np.fromiter((r.clipped for r in records), bool, n)
        values = np.empty((n, n_series(n_layers)), dtype=np.float64)
        n_step = len(STEP_METRICS)
        values[:, :n_step] = np.array(list(map(_step_values, records)), dtype=np.float64)
        present = np.ones(values.shape, dtype=bool)
        if n_layers:
            tuples = list(map(_layer_values, chain.from_iterable(r.layers for r in records)))
            table = np.array(tuples, dtype=np.float64)  # None becomes NaN here
            values[:, n_step:] = table.reshape(n, -1)
            nan = np.isnan(table)
            if nan.any():  # a NaN may be a NaN or a None: ask the objects where there is one
                objects = np.array(tuples, dtype=object)
                layer_present = ~nan
                layer_present[nan] = objects[nan] != None  # noqa: E711  (elementwise)
                present[:, n_step:] = layer_present.reshape(n, -1)
        return cls(n_layers, steps, epochs, clipped, values, present)


# --------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------


def _xor_delta(block: np.ndarray, dtype: str) -> np.ndarray:
    """Column-major ``(k, n)`` floats as ``dtype``, each XOR-ed with its predecessor (bits)."""
    bits = np.ascontiguousarray(block, dtype=dtype).view(f"<u{np.dtype(dtype).itemsize}")
    delta = bits.copy()
    delta[:, 1:] ^= bits[:, :-1]
    return delta


def _planes(delta: np.ndarray) -> bytes:
    """``(k, n)`` words byte-shuffled: byte 0 of every word, then byte 1, ..."""
    return delta.view(np.uint8).reshape(*delta.shape, delta.dtype.itemsize).transpose(
        2, 0, 1).tobytes()


def _unshuffled(data: memoryview, k: int, n: int, dtype: str, cols: np.ndarray) -> np.ndarray:
    """Rows ``cols`` of a block written by :func:`_xor_delta` and :func:`_planes`, as ``(len(cols), n)`` float64."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.frombuffer(data, dtype=np.uint8, count=k * n * itemsize).reshape(itemsize, k, n)
    uint = np.uint32 if itemsize == 4 else np.uint64
    bits = np.ascontiguousarray(raw[:, cols, :].transpose(1, 2, 0)).view(uint)
    bits = bits.reshape(len(cols), n)
    np.bitwise_xor.accumulate(bits, axis=1, out=bits)
    return bits.view(dtype).astype(np.float64)


@lru_cache(maxsize=64)
def _groups(n_layers: int) -> np.ndarray:
    """The frame each series is stored in (GWH2): 0 for the step metrics, 1 + i for layer i."""
    return np.concatenate([np.zeros(len(STEP_METRICS), np.int64),
                           np.repeat(np.arange(1, n_layers + 1), len(LAYER_METRICS))])


def _frame(body: bytes) -> tuple[bytes, int]:
    """``body`` zstd-compressed when that makes it smaller, and its length field (bit 31: raw)."""
    packed = _compressor().compress(body)
    if len(packed) < len(body):
        return packed, len(packed)
    return body, len(body) | _RAW_FRAME


def encode_chunk(cols: StepColumns, *, framed: bool = True) -> bytes:
    """One chunk's bytes (see the module docstring): GWH2, or the single-body GWH1 of the
    first columnar stores when not ``framed`` (still read; written only by tests)."""
    n, values, present = len(cols), cols.values, cols.present
    with np.errstate(over="ignore"):
        v32 = values.astype(np.float32)
    exact32 = (v32.astype(np.float64).view(np.uint64) == values.view(np.uint64)) | ~present
    any_present = present.any(axis=0)
    modes = np.where(~any_present, _ABSENT, np.where(exact32.all(axis=0), _F32, _F64))
    modes = modes.astype(np.uint8)
    all_present = present.all(axis=0)
    partial = bool((any_present & ~all_present).any())
    # absent values are stored as NaN (the bitmap says they are absent)
    filled = values if all_present.all() else np.where(present, values, np.nan)
    head = [modes.tobytes(),
            np.diff(cols.steps, prepend=0).astype("<i4").tobytes(),
            np.diff(cols.epochs, prepend=0).astype("<i4").tobytes(),
            np.packbits(cols.clipped).tobytes()]
    if partial:
        head.append(np.packbits(present.T).tobytes())
    f32, f64 = modes == _F32, modes == _F64
    d32, d64 = _xor_delta(filled[:, f32].T, "<f4"), _xor_delta(filled[:, f64].T, "<f8")
    if not framed:
        body, length = _frame(b"".join([*head, _planes(d32), _planes(d64)]))
        codec = _CODEC_RAW if length & _RAW_FRAME else _CODEC_ZSTD
        return _HEADER.pack(_MAGIC, codec, int(partial), cols.n_layers, n) + body
    frames = [_frame(b"".join(head))]
    group, edges = _groups(cols.n_layers), np.arange(cols.n_layers + 2)
    at32 = np.searchsorted(group[f32], edges).tolist()  # series are in group order
    at64 = np.searchsorted(group[f64], edges).tolist()
    for g in range(cols.n_layers + 1):
        frames.append(_frame(_planes(d32[at32[g]:at32[g + 1]])
                             + _planes(d64[at64[g]:at64[g + 1]])))
    table = np.array([length for _, length in frames], dtype="<u4").tobytes()
    return b"".join([_HEADER.pack(_MAGIC2, _CODEC_FRAMES, int(partial), cols.n_layers, n),
                     table, *(data for data, _ in frames)])


@dataclass
class ChunkData:
    """What :func:`decode_chunk` returns: the steps and the requested series."""

    steps: np.ndarray
    epochs: np.ndarray
    clipped: np.ndarray
    values: np.ndarray  # (n, len(series)) float64, NaN where absent
    present: np.ndarray  # (n, len(series)) bool


def _head(body: memoryview, n: int, s_total: int, partial: bool
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]:
    """modes, steps, epochs, clipped, the presence bitmap (or None), and where the floats
    start in ``body`` (GWH1: the whole body; GWH2: its first frame)."""
    modes = np.frombuffer(body, dtype=np.uint8, count=s_total)
    pos = s_total
    steps = np.cumsum(np.frombuffer(body, dtype="<i4", count=n, offset=pos), dtype=np.int64)
    pos += 4 * n
    epochs = np.cumsum(np.frombuffer(body, dtype="<i4", count=n, offset=pos), dtype=np.int64)
    pos += 4 * n
    nbytes = (n + 7) // 8
    clipped = np.unpackbits(np.frombuffer(body, np.uint8, nbytes, pos), count=n).astype(bool)
    pos += nbytes
    bitmap = None
    if partial:
        nbits = (s_total * n + 7) // 8
        bitmap = np.unpackbits(np.frombuffer(body, np.uint8, nbits, pos), count=s_total * n)
        pos += nbits
    return modes, steps, epochs, clipped, bitmap, pos


def _read_floats(body: memoryview, pos: int, n: int, modes: np.ndarray, wanted: np.ndarray,
                 want_modes: np.ndarray, picked_cols: np.ndarray, values: np.ndarray) -> None:
    """Unshuffle the float32 then float64 blocks of the series ``modes`` describe (starting at
    ``pos``) into ``values[:, picked_cols]`` for the wanted series (indices into ``modes``)."""
    for mode, dtype in ((_F32, "<f4"), (_F64, "<f8")):
        members = np.flatnonzero(modes == mode)
        k = members.size
        picked = np.flatnonzero(want_modes == mode)
        if picked.size:
            rows = np.searchsorted(members, wanted[picked])
            values[:, picked_cols[picked]] = _unshuffled(body[pos:], k, n, dtype, rows).T
        pos += k * n * np.dtype(dtype).itemsize


def decode_chunk(data: bytes, series: Sequence[int] | None = None) -> ChunkData:
    """The steps of a chunk and its ``series`` (all when None), bit for bit as written. A
    GWH2 chunk decompresses only the frames holding them."""
    magic, codec, flags, n_layers, n = _HEADER.unpack_from(data)
    if magic not in (_MAGIC, _MAGIC2):
        raise ValueError("not a gradwatch history chunk")
    s_total = n_series(n_layers)
    wanted = np.arange(s_total) if series is None else np.asarray(series, dtype=np.int64)
    stored = wanted < s_total  # a series the run did not record is absent throughout
    wanted = np.where(stored, wanted, 0)
    body = memoryview(data)[_HEADER.size:]
    if magic == _MAGIC:
        if codec == _CODEC_ZSTD:
            body = memoryview(_decompressor().decompress(body))
        frames: list[memoryview] = [body]
    else:
        pos = _HEADER.size + 4 * (n_layers + 2)
        bounds = []
        for length in np.frombuffer(body, dtype="<u4", count=n_layers + 2).tolist():
            size = length & (_RAW_FRAME - 1)
            bounds.append((pos, pos + size, length & _RAW_FRAME))
            pos += size
        whole = memoryview(data)

        def frame(i: int) -> memoryview:
            a, b, raw = bounds[i]
            return whole[a:b] if raw else memoryview(_decompressor().decompress(whole[a:b]))

        frames = [frame(0)]
    modes, steps, epochs, clipped, bitmap, pos = _head(frames[0], n, s_total, bool(flags & 1))
    want_modes = np.where(stored, modes[wanted], _ABSENT)
    if bitmap is not None:
        present = bitmap.reshape(s_total, n)[wanted].T.astype(bool) & stored
    else:
        present = np.empty((n, len(wanted)), dtype=bool)
        present[:] = want_modes != _ABSENT
    values = np.full((n, len(wanted)), np.nan)
    if magic == _MAGIC:
        _read_floats(frames[0], pos, n, modes, wanted, want_modes, np.arange(len(wanted)),
                     values)
        return ChunkData(steps, epochs, clipped, values, present)
    group = _groups(n_layers)
    want_group = np.where(want_modes != _ABSENT, group[wanted], -1)
    n_step, n_metric = len(STEP_METRICS), len(LAYER_METRICS)
    groups = sorted(set(want_group.tolist()) - {-1})
    layer_modes = modes[n_step:].reshape(n_layers, n_metric)
    if len(groups) > 1 and groups[0] > 0 and (layer_modes[np.array(groups) - 1]
                                              == layer_modes[groups[0] - 1]).all():
        # several layers stored alike (the usual case): their frames side by side, one pass
        stack = np.frombuffer(b"".join(frame(g + 1) for g in groups), np.uint8).reshape(
            len(groups), -1)
        _read_stacked(stack, n, layer_modes[groups[0] - 1], np.searchsorted(groups, want_group),
                      (wanted - n_step) % n_metric, want_modes, values)
        return ChunkData(steps, epochs, clipped, values, present)
    for g in groups:
        members = np.arange(0, n_step) if g == 0 else np.arange(
            n_step + (g - 1) * n_metric, n_step + g * n_metric)
        cols = np.flatnonzero(want_group == g)
        _read_floats(frame(g + 1), 0, n, modes[members], wanted[cols] - members[0],
                     want_modes[cols], cols, values)
    return ChunkData(steps, epochs, clipped, values, present)


def _read_stacked(stack: np.ndarray, n: int, modes: np.ndarray, frame_of: np.ndarray,
                  metric: np.ndarray, want_modes: np.ndarray, values: np.ndarray) -> None:
    """:func:`_read_floats` over layer frames of the same modes, ``stack[i]`` the i-th:
    wanted column j is metric ``metric[j]`` of frame ``frame_of[j]``."""
    pos = 0
    for mode, dtype, uint in ((_F32, "<f4", np.uint32), (_F64, "<f8", np.uint64)):
        members = np.flatnonzero(modes == mode)
        itemsize = np.dtype(dtype).itemsize
        size = members.size * n * itemsize
        picked = np.flatnonzero(want_modes == mode)
        if picked.size:
            block = stack[:, pos:pos + size].reshape(len(stack), itemsize, members.size, n)
            rows = np.searchsorted(members, metric[picked])
            raw = block[frame_of[picked], :, rows, :]  # (picked, itemsize, n)
            bits = np.ascontiguousarray(raw.transpose(0, 2, 1)).view(uint).reshape(-1, n)
            np.bitwise_xor.accumulate(bits, axis=1, out=bits)
            values[:, picked] = bits.view(dtype).astype(np.float64).T
        pos += size


def recode_chunk(data: bytes, *, framed: bool = True) -> bytes:
    """The same chunk as GWH2 (``framed``) or GWH1: what migration 0021 converts."""
    if data[:4] == (_MAGIC2 if framed else _MAGIC):
        return data
    n_layers = _HEADER.unpack_from(data)[3]
    d = decode_chunk(data)
    return encode_chunk(StepColumns(n_layers, d.steps, d.epochs, d.clipped, d.values, d.present),
                        framed=framed)


assert (STEP_METRICS, LAYER_METRICS) == (STEP_FIELDS, LAYER_FIELDS)  # the trainer's row order
