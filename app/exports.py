"""A job's stored history as CSV text or a Parquet file, every recorded point, read a window
of chunks at a time.

Two tables, in the long ("tidy") layout pandas and spreadsheets expect:

- ``metrics.csv``: one row per recorded step:
  ``step,epoch,loss,grad_norm,clipped_grad_norm,lr,clipped``;
- ``gradients.csv``: one row per recorded step and layer:
  ``step,epoch,layer,grad_norm,weight_grad_norm,weight_norm,update_norm,act_mean,act_std,
  dead_fraction,saturated_fraction`` (``df.pivot(index="step", columns="layer",
  values="grad_norm")`` gives the wide table).

Numbers are written with ``repr`` (the shortest text that reads back to the same float64),
non-finite ones as ``nan``, ``inf``, ``-inf`` (what ``float()`` and pandas read back); an
empty cell is a statistic that was not recorded (e.g. ``dead_fraction`` of a tanh layer).
Parquet (``metrics.parquet``, ``gradients.parquet``): the same columns, typed (``step``,
``epoch``, ``layer`` int64, the statistics float64, ``clipped`` bool), one row group per window
of chunks, so the file is written in bounded memory too; NaN, ±Inf and -0.0 are the stored
float64 bits, a statistic that was not recorded is null.

Each window is read in its own short session, so a long download holds no transaction open;
a running job's export has the steps stored when the download began.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session, sessionmaker

from app.downsampling import LAYER_METRICS, STEP_METRICS
from app.history_store import ChunkData, decode_chunk, series_index
from app.repositories import HistoryRepository

__all__ = ["CSV_COLUMNS", "PARQUET", "Table", "csv_rows", "parquet_file", "parquet_schema"]

Table = Literal["metrics", "gradients"]
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": ("step", "epoch", *STEP_METRICS, "clipped"),
    "gradients": ("step", "epoch", "layer", *LAYER_METRICS),
}
# Chunks read per query (a chunk holds one flush: up to flush_every steps, all series): what
# the export holds in memory at once, whatever the job's length (bench/export_bench.py).
WINDOW = 8


def _cells(values: np.ndarray, present: np.ndarray) -> list[str]:
    """Every value as text, row-major: ``repr`` (``nan``/``inf``/``-inf``), empty when absent."""
    cells = list(map(repr, values.ravel().tolist()))
    for i in np.flatnonzero(~present.ravel()).tolist():
        cells[i] = ""
    return cells


def _metrics_text(d: ChunkData) -> str:
    k = d.values.shape[1]
    cells = _cells(d.values, d.present)
    return "".join(
        f"{step},{epoch},{','.join(cells[i * k:(i + 1) * k])},{'true' if clipped else 'false'}\n"
        for i, (step, epoch, clipped) in enumerate(zip(d.steps.tolist(), d.epochs.tolist(),
                                                       d.clipped.tolist(), strict=True)))


def _gradients_text(d: ChunkData, n_layers: int) -> str:
    k = len(LAYER_METRICS)
    cells = _cells(d.values, d.present)  # per step: layer 0's k metrics, layer 1's, ...
    prefixes = [f"{step},{epoch},{layer},"
                for step, epoch in zip(d.steps.tolist(), d.epochs.tolist(), strict=True)
                for layer in range(n_layers)]
    return "".join(f"{p}{','.join(cells[i * k:(i + 1) * k])}\n" for i, p in enumerate(prefixes))


def _series(table: Table, n_layers: int) -> Sequence[int]:
    if table == "metrics":
        return [series_index(-1, m) for m in range(len(STEP_METRICS))]
    return [series_index(ly, m) for ly in range(n_layers) for m in range(len(LAYER_METRICS))]


def _windows(factory: sessionmaker[Session], job_id: str, table: Table
             ) -> Iterator[tuple[list[ChunkData], int]]:
    """The job's stored chunks, decoded to ``table``'s series, a window at a time, with the
    number of layers (nothing for a job without a history)."""
    with factory() as session:
        repo = HistoryRepository(session)
        found = repo.key_of(job_id)
        if found is None:
            return
        key, n_layers = found
        spans = repo.chunk_spans(key, 0, 2**31 - 1)
    series = _series(table, n_layers)
    for start in range(0, len(spans), WINDOW):
        window = spans[start:start + WINDOW]
        with factory() as session:
            chunks = HistoryRepository(session).chunks(key, window[0][0], window[-1][1])
        yield [decode_chunk(data, series) for _, _, _, data in chunks], n_layers


def csv_rows(factory: sessionmaker[Session], job_id: str, table: Table) -> Iterator[bytes]:
    """The header, then every stored step of ``job_id`` as CSV lines, a window at a time."""
    yield (",".join(CSV_COLUMNS[table]) + "\n").encode()
    for decoded, n_layers in _windows(factory, job_id, table):
        for d in decoded:  # one flush's steps per piece of the response
            text = _metrics_text(d) if table == "metrics" else _gradients_text(d, n_layers)
            yield text.encode()


PARQUET = "application/vnd.apache.parquet"


def parquet_schema(table: Table) -> pa.Schema:
    """The Parquet columns: those of the CSV, typed."""
    ints = ("step", "epoch", "layer")
    return pa.schema([pa.field(c, pa.int64() if c in ints else
                               pa.bool_() if c == "clipped" else pa.float64(),
                               nullable=c not in ints and c != "clipped")
                      for c in CSV_COLUMNS[table]])


def _record_batch(decoded: list[ChunkData], table: Table, n_layers: int,
                  schema: pa.Schema) -> pa.RecordBatch:
    """One window's rows (every chunk's steps; per layer for ``gradients``)."""
    steps = np.concatenate([d.steps for d in decoded]).astype(np.int64)
    epochs = np.concatenate([d.epochs for d in decoded]).astype(np.int64)
    values = np.concatenate([d.values for d in decoded])
    present = np.concatenate([d.present for d in decoded])
    if table == "metrics":
        clipped = np.concatenate([d.clipped for d in decoded])
        head = [pa.array(steps), pa.array(epochs)]
        tail = [pa.array(clipped, type=pa.bool_())]
    else:  # per step: layer 0's metrics, layer 1's, ... -> one row per (step, layer)
        k = len(LAYER_METRICS)
        values = values.reshape(len(steps) * n_layers, k)
        present = present.reshape(len(steps) * n_layers, k)
        head = [pa.array(np.repeat(steps, n_layers)), pa.array(np.repeat(epochs, n_layers)),
                pa.array(np.tile(np.arange(n_layers, dtype=np.int64), len(steps)))]
        tail = []
    floats = [pa.array(values[:, j], mask=~present[:, j], type=pa.float64())
              for j in range(values.shape[1])]
    return pa.RecordBatch.from_arrays([*head, *floats, *tail], schema=schema)


class _Pipe:
    """A write-only file whose bytes are taken out as they come (what ParquetWriter writes
    to): the response streams the file while it is being written."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def parquet_file(factory: sessionmaker[Session], job_id: str, table: Table) -> Iterator[bytes]:
    """``job_id``'s stored history as a Parquet file, in pieces: one row group per window of
    chunks, then the footer (a job without steps: a valid file with no rows)."""
    schema = parquet_schema(table)
    pipe = _Pipe()
    with pq.ParquetWriter(pa.PythonFile(pipe, mode="w"), schema,
                          compression="zstd") as writer:
        for decoded, n_layers in _windows(factory, job_id, table):
            if decoded:
                writer.write_batch(_record_batch(decoded, table, n_layers, schema))
                yield pipe.take()
    yield pipe.take()
