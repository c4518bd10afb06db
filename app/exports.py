"""A job's stored history as CSV text, every recorded point, read a window of chunks at a time.

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
Each window is read in its own short session, so a long download holds no transaction open;
a running job's export has the steps stored when the download began.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.downsampling import LAYER_METRICS, STEP_METRICS
from app.history_store import ChunkData, decode_chunk, series_index
from app.repositories import HistoryRepository

__all__ = ["CSV_COLUMNS", "Table", "csv_rows"]

Table = Literal["metrics", "gradients"]
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "metrics": ("step", "epoch", *STEP_METRICS, "clipped"),
    "gradients": ("step", "epoch", "layer", *LAYER_METRICS),
}
# Chunks read per query (a chunk holds one flush: up to flush_every steps, all series): what
# the export holds in memory at once, whatever the job's length (bench/export_bench.py).
WINDOW = 8


def _cells(values: np.ndarray, present: np.ndarray) -> list[list[str]]:
    """Rows of text cells: ``repr`` of each float (``nan``/``inf``/``-inf``), empty when absent."""
    text = [[repr(v) for v in row] for row in values.tolist()]
    if not present.all():
        for i, j in zip(*np.nonzero(~present), strict=True):
            text[i][j] = ""
    return text


def _metrics_lines(d: ChunkData) -> Iterator[str]:
    cells = _cells(d.values, d.present)
    for step, epoch, clipped, row in zip(d.steps.tolist(), d.epochs.tolist(),
                                         d.clipped.tolist(), cells, strict=True):
        yield f"{step},{epoch},{','.join(row)},{'true' if clipped else 'false'}\n"


def _gradient_lines(d: ChunkData, n_layers: int) -> Iterator[str]:
    k = len(LAYER_METRICS)
    cells = _cells(d.values, d.present)
    for step, epoch, row in zip(d.steps.tolist(), d.epochs.tolist(), cells, strict=True):
        for layer in range(n_layers):
            yield f"{step},{epoch},{layer},{','.join(row[layer * k:(layer + 1) * k])}\n"


def _series(table: Table, n_layers: int) -> Sequence[int]:
    if table == "metrics":
        return [series_index(-1, m) for m in range(len(STEP_METRICS))]
    return [series_index(ly, m) for ly in range(n_layers) for m in range(len(LAYER_METRICS))]


def csv_rows(factory: sessionmaker[Session], job_id: str, table: Table) -> Iterator[bytes]:
    """The header, then every stored step of ``job_id`` as CSV lines, a window at a time."""
    yield (",".join(CSV_COLUMNS[table]) + "\n").encode()
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
        for _, _, _, data in chunks:  # one flush's steps per piece of the response
            d = decode_chunk(data, series)
            lines = _metrics_lines(d) if table == "metrics" else _gradient_lines(d, n_layers)
            yield "".join(lines).encode()
