"""The emitted steps of a run: rows of preallocated arrays, handed to the sink in blocks.

The trainer writes each step's figures straight into the next row of a preallocated block
(:attr:`StepRecorder.row`) and commits it when the step is emitted. A sink that takes arrays
(:class:`core.telemetry.BlockSink`) receives the rows as :class:`core.telemetry.StepBlock` s;
any other sink gets one :class:`core.telemetry.StepRecord` per emitted step, as before.
``StepRecord`` objects are built only where something consumes them: the online monitor, the
run's kept history (``TrainingResult.steps``) and per-record sinks.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from core.telemetry import (
    LAYER_FIELDS,
    STEP_FIELDS,
    Sink,
    StepBlock,
    StepRecord,
    record_from_values,
)

__all__ = ["BLOCK_ROWS", "BLOCK_SECONDS", "StepRecorder", "n_values"]

BLOCK_ROWS = 64  # rows handed to a block sink at a time ...
BLOCK_SECONDS = 0.05  # ... or fewer, when this long has passed since the last hand-over


def n_values(n_layers: int) -> int:
    """Figures per row: the step's, then every layer's."""
    return len(STEP_FIELDS) + len(LAYER_FIELDS) * n_layers


class StepRecorder:
    """Rows of emitted steps, the kept history, and the sink they go to.

    Parameters
    ----------
    n_layers : int
        Layers recorded per step (0: step figures only).
    present : ndarray of shape ``(n_values(n_layers),)``, bool
        Which figures apply (an activation statistic may not): the same for every row.
    sink : Sink or None
    keep_records, max_records :
        As :meth:`core.Trainer.run`: keep every emitted record, thinned past
        ``max_records`` (keeping the first, the last and every notable step), or only the last.
    """

    def __init__(self, n_layers: int, present: np.ndarray, sink: Sink | None, *,
                 keep_records: bool, max_records: int | None) -> None:
        self.n_layers = n_layers
        self.present = present
        self._absent = np.flatnonzero(~present).tolist()
        self.sink = sink
        self._write_block = getattr(sink, "write_block", None)
        self.keep_records = keep_records
        self.kept: list[StepRecord] = []
        self._last: tuple[Any, ...] | None = None  # where the last emitted step's row is
        self._last_record: StepRecord | None = None
        self._stride = 1
        self._limit = max_records
        self._important: set[int] = set()
        self._handed_at = time.monotonic()
        self._new_block()

    def _new_block(self) -> None:
        self._steps = np.empty(BLOCK_ROWS, dtype=np.int64)
        self._epochs = np.empty(BLOCK_ROWS, dtype=np.int64)
        self._clipped = np.empty(BLOCK_ROWS, dtype=bool)
        self._values = np.empty((BLOCK_ROWS, n_values(self.n_layers)), dtype=np.float64)
        self._values[:, ~self.present] = np.nan  # figures that do not apply: never written
        self._n = 0
        self.row = self._values[0]

    def record(self, step: int, epoch: int, clipped: bool, row: np.ndarray | None = None
               ) -> StepRecord:
        """The current row (or ``row``) as a StepRecord."""
        vals: list[Any] = (self.row if row is None else row).tolist()
        for k in self._absent:
            vals[k] = None
        return record_from_values(step, epoch, clipped, vals, self.n_layers)

    def emit(self, step: int, epoch: int, clipped: bool, record: StepRecord | None,
             notable: bool = False) -> None:
        """Commit the current row as an emitted step (``record``: its StepRecord, if built)."""
        n = self._n
        self._steps[n], self._epochs[n], self._clipped[n] = step, epoch, clipped
        self._n = n + 1
        if self._write_block is None and self.sink is not None:
            record = record or self.record(step, epoch, clipped)
            self.sink.write_steps([record])
        if self.keep_records:
            self._keep(record or self.record(step, epoch, clipped), notable)
        else:
            self._last = (step, epoch, clipped, self._values, n)
            self._last_record = record
        if self._write_block is not None:
            if self._n == BLOCK_ROWS or time.monotonic() - self._handed_at >= BLOCK_SECONDS:
                self.hand_over()
                return
        elif self._n == BLOCK_ROWS:
            self._n = 0  # nobody takes blocks: the arrays are a ring of recent rows
        self.row = self._values[self._n]

    def hand_over(self) -> None:
        """Give a block sink the rows committed so far (the current row stays current)."""
        self._handed_at = time.monotonic()
        if self._write_block is None or not self._n:
            return
        n = self._n
        block = StepBlock(self.n_layers, self._steps[:n], self._epochs[:n], self._clipped[:n],
                          self._values[:n],
                          np.broadcast_to(self.present, (n, self.present.shape[0])))
        current = self._values[n] if n < BLOCK_ROWS else None
        self._new_block()
        if current is not None:  # a step computed but not emitted yet keeps its figures
            self.row[:] = current
        self._write_block(block)

    def _keep(self, record: StepRecord, notable: bool) -> None:
        kept = self.kept
        if notable:
            self._important.add(record.step)
        if kept and kept[-1].step % self._stride and kept[-1].step not in self._important:
            kept.pop()  # the previous record was only kept as the latest one
        kept.append(record)
        if self._limit is not None and len(kept) > self._limit:
            self._stride *= 2
            stride, important = self._stride, self._important
            kept[:] = [r for i, r in enumerate(kept)
                       if i == 0 or r.step % stride == 0 or r.step in important
                       or r is record]
            self._limit = max(self._limit, 2 * len(kept))

    def result_steps(self) -> list[StepRecord]:
        """What ``TrainingResult.steps`` holds."""
        if self.keep_records:
            return self.kept
        if self._last_record is None and self._last is not None:
            step, epoch, clipped, values, n = self._last
            self._last_record = self.record(step, epoch, clipped, values[n])
        return [self._last_record] if self._last_record is not None else []
