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
            text = _metrics_text(d) if table == "metrics" else _gradients_text(d, n_layers)
            yield text.encode()
