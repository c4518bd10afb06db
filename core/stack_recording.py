"""The emitted steps of a stacked run: one preallocated ``(steps, K, n_values)`` block for
all members, handed to each member's sink as that member's :class:`core.telemetry.StepBlock`.

:class:`core.batched.BatchedTrainer` computes a step's figures for every member as one
``(K, n_values)`` array (the row layout of :mod:`core.recording`) and writes it into the
block's next slot; emitting marks ``(slot, member)`` cells. A member's emitted rows are handed
over (to its sink's ``write_block`` and to its kept history) when the block is full, every
:data:`core.recording.BLOCK_SECONDS` (if any member has a block sink), before one of its
alerts or epoch records, and when it leaves the stack; members without a block sink whose
history is not thinned share one copy of the stack's rows per hand-over instead.
:class:`core.telemetry.StepRecord` objects are built only where something consumes them: the
monitor's replays, per-record sinks (``write_steps``, called as the single trainer calls it)
and the kept history (``TrainingResult.steps``), column-wise when it is first read, all of a
member's hand-overs in one pass (:mod:`core.stack_records`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

import numpy as np

from core.recording import BLOCK_ROWS, BLOCK_SECONDS, n_values
from core.stack_records import Part, part_of, records_of, records_of_parts
from core.telemetry import Sink, StepBlock, StepRecord, record_from_values

__all__ = ["StackRecorder", "kept_row_bytes", "records_of"]

Array = np.ndarray


class _Shared:
    """The emitted rows of a whole stack at one hand-over, shared by the histories of the
    members that only keep them (no block sink, no thinning): a member's
    :class:`StepBlock` is cut from it when its history is read."""

    __slots__ = ("clipped", "emitted", "epochs", "present", "steps", "values")

    def __init__(self, steps: Array, epochs: Array, clipped: Array, values: Array,
                 emitted: Array, present: Array) -> None:
        self.steps, self.epochs, self.clipped = steps, epochs, clipped
        self.values, self.emitted, self.present = values, emitted, present

    def block(self, n_layers: int, col: int) -> StepBlock:
        steps, epochs, clipped, values, present = self.part(col)
        return StepBlock(n_layers, steps, epochs, clipped, values,
                         np.broadcast_to(present, (len(steps), present.shape[0])))

    def part(self, col: int) -> Part:
        """Column ``col``'s emitted rows: steps, epochs, clipped, values, present (one row)."""
        emitted = self.emitted[:, col]
        if emitted.all():  # every row (record_every=1): views, no index arrays
            return (self.steps, self.epochs, self.clipped[:, col], self.values[:, col],
                    self.present)
        rows = emitted.nonzero()[0]
        return (self.steps[rows], self.epochs[rows], self.clipped[rows, col],
                self.values[rows, col], self.present)


def kept_row_bytes(n_layers: int) -> int:
    """About what a stacked run holds per member and kept step of its history: the row's
    figures in their blocks and the bookkeeping of kept rows. An upper estimate from the
    layout (twice the float64 figures, plus 96 bytes), checked against the measured growth of
    a 64-member run (2026-11-30): 421 and 950 bytes a member-step for 3 and 9 layers, where
    this gives 544 and 1,312."""
    return 16 * n_values(n_layers) + 96


class _History:
    """One member's kept rows, thinned as :meth:`core.recording.StepRecorder._keep` thins
    records (the same rule over step numbers)."""

    def __init__(self, n_layers: int, keep_records: bool, max_records: int | None) -> None:
        self.n_layers = n_layers
        self.keep_records = keep_records
        # every block (no limit), the last one (only the last row kept), or those that hold
        # a kept row (None in place of the others, so that numbers stay valid); without a
        # limit, also (shared rows, column) pairs
        self.blocks: list[StepBlock | tuple[_Shared, int] | None] = []
        self.kept: list[tuple[int, int, int]] = []  # (step, block number, row) with a limit
        self._limit = max_records
        self._stride = 1
        self._important: set[int] = set()

    def add_shared(self, shared: _Shared, col: int) -> None:
        """Rows in column ``col`` of ``shared`` (only without a limit on kept records)."""
        if self.keep_records:
            self.blocks.append((shared, col))
        else:
            self.blocks = [(shared, col)]

    def _block(self, b: int) -> StepBlock | None:
        blk = self.blocks[b]
        return blk[0].block(self.n_layers, blk[1]) if isinstance(blk, tuple) else blk

    def add(self, block: StepBlock, notable: Array) -> None:
        if not self.keep_records:
            self.blocks = [block]
            return
        if self._limit is None:  # every emitted row is kept: nothing to decide per row
            self.blocks.append(block)
            return
        b = len(self.blocks)
        self.blocks.append(block)
        stride = self._stride
        n = len(block)
        if stride == 1 and len(self.kept) + n <= self._limit:  # nothing to thin yet
            steps = block.steps.tolist()
            self.kept.extend(zip(steps, [b] * n, range(n), strict=True))
            if notable.any():
                self._important.update(block.steps[notable].tolist())
            return
        for i, (step, note) in enumerate(zip(block.steps.tolist(), notable.tolist(),
                                             strict=True)):
            self._keep(step, b, i, note)
        if self._stride != stride:  # thinned: let go of the blocks no kept row is in
            used = {b for _, b, _ in self.kept}
            self.blocks = [blk if j in used else None for j, blk in enumerate(self.blocks)]

    def _keep(self, step: int, b: int, i: int, notable: bool) -> None:
        kept = self.kept
        if notable:
            self._important.add(step)
        if kept and kept[-1][0] % self._stride and kept[-1][0] not in self._important:
            kept.pop()  # the previous row was only kept as the latest one
        entry = (step, b, i)
        kept.append(entry)
        assert self._limit is not None
        if len(kept) > self._limit:
            self._stride *= 2
            stride, important = self._stride, self._important
            kept[:] = [e for j, e in enumerate(kept)
                       if j == 0 or e[0] % stride == 0 or e[0] in important or e is entry]
            self._limit = max(self._limit, 2 * len(kept))

    def steps(self) -> list[StepRecord]:
        """What ``TrainingResult.steps`` holds."""
        if not self.keep_records:
            last = self._block(len(self.blocks) - 1) if self.blocks else None
            return [last.record(len(last) - 1)] if last is not None and len(last) else []
        if self._limit is None:
            parts = [blk[0].part(blk[1]) if isinstance(blk, tuple) else part_of(blk)
                     for blk in self.blocks if blk is not None]
            return records_of_parts(self.n_layers, parts)
        parts = []
        for b, group in groupby(self.kept, key=itemgetter(1)):  # kept rows block by block
            blk = self.blocks[b]
            assert isinstance(blk, StepBlock)
            parts.append(part_of(blk, [i for _, _, i in group]))
        return records_of_parts(self.n_layers, parts)


class StackRecorder:
    """Rows of emitted steps of ``n_members`` members, their kept histories and their sinks.

    Parameters
    ----------
    n_members, n_layers : int
    present : ndarray of shape ``(n_values(n_layers),)``, bool
        Which figures apply (the same for every member of a stack).
    sinks : list of Sink or None, one per member
    keep_records, max_records :
        As :meth:`core.Trainer.run`.
    """

    def __init__(self, n_members: int, n_layers: int, present: Array,
                 sinks: Sequence[Sink | None], *, keep_records: bool,
                 max_records: int | None) -> None:
        K = n_members
        self.n_layers = n_layers
        self.present = present
        self._absent = np.flatnonzero(~present).tolist()
        self.sinks = list(sinks)
        self._write_block = [getattr(s, "write_block", None) for s in self.sinks]
        # rows are handed over every BLOCK_SECONDS only for block sinks (a history is read
        # after the run): without any, only a full block is handed over
        self._timed = any(w is not None for w in self._write_block)
        # members whose sink takes records one at a time (as the single trainer calls it)
        self.record_sink = np.array([s is not None and w is None
                                     for s, w in zip(self.sinks, self._write_block,
                                                     strict=True)], dtype=bool)
        self._any_record_sink = bool(self.record_sink.any())
        self.histories = [_History(n_layers, keep_records, max_records) for _ in range(K)]
        # members whose rows only go to their history, unthinned: handed over all at once
        self._shared = np.array([w is None for w in self._write_block], dtype=bool) & (
            not keep_records or max_records is None)
        nv = n_values(n_layers)
        self.values = np.full((BLOCK_ROWS, K, nv), np.nan)
        self.steps = np.zeros(BLOCK_ROWS, dtype=np.int64)
        self.epochs = np.zeros(BLOCK_ROWS, dtype=np.int64)
        self.clipped = np.zeros((BLOCK_ROWS, K), dtype=bool)
        self.emitted = np.zeros((BLOCK_ROWS, K), dtype=bool)
        self.notable = np.zeros((BLOCK_ROWS, K), dtype=bool)
        self.pending = np.zeros(K, dtype=bool)  # current step's row written, not emitted
        self.t = -1  # the current step's slot
        self._present_rows: dict[int, Array] = {}
        self._handed_at = time.monotonic()

    # ------------------------------------------------------------------ one step
    def begin(self, step: int, epoch: int) -> Array:
        """Open a slot for ``step``; returns its ``(K, n_values)`` rows (indexed by member)."""
        t = self.t + 1
        if t == BLOCK_ROWS or (t and self._timed
                               and time.monotonic() - self._handed_at >= BLOCK_SECONDS):
            self.hand_over_all()
            t = 0
        self.t = t
        self.steps[t], self.epochs[t] = step, epoch
        self.emitted[t] = False
        self.notable[t] = False
        return self.values[t]

    def write(self, members: Array, values: Array, clipped: Array) -> None:
        """The current step's figures of ``members`` (member indices, in row order)."""
        t = self.t
        if len(members) == self.values.shape[1]:  # every member (rows in member order)
            self.values[t] = values
            self.clipped[t] = clipped
            self.pending[:] = True
            return
        self.values[t, members] = values
        self.clipped[t, members] = clipped
        self.pending[members] = True

    def emit(self, members: Array, notable: Array | bool = False) -> None:
        """Commit the current step's rows of ``members`` (member indices, each once) as
        emitted steps."""
        t = self.t
        if len(members) == len(self.pending) and isinstance(notable, bool):
            # every member: whole rows, no index arrays
            self.emitted[t] = True
            self.notable[t] = notable
            self.pending[:] = False
        else:
            self.emitted[t, members] = True
            self.notable[t, members] = notable
            self.pending[members] = False
        if not self._any_record_sink:
            return
        for k in members[self.record_sink[members]].tolist():
            sink = self.sinks[k]
            assert sink is not None
            sink.write_steps([self.record(k)])

    def record(self, k: int) -> StepRecord:
        """Member ``k``'s row of the current step as a StepRecord."""
        t = self.t
        vals: list[Any] = self.values[t, k].tolist()
        for j in self._absent:
            vals[j] = None
        return record_from_values(int(self.steps[t]), int(self.epochs[t]),
                                  bool(self.clipped[t, k]), vals, self.n_layers)

    # ------------------------------------------------------------------ hand-over
    def hand_over(self, k: int) -> None:
        """Give member ``k``'s emitted rows not handed over yet to its block sink and history."""
        self._hand_over_rows(k, np.flatnonzero(self.emitted[:self.t + 1, k]))

    def _hand_over_rows(self, k: int, rows: Array) -> None:
        """Member ``k``'s emitted rows ``rows`` (of the current block) to its sink and history."""
        if not len(rows):
            return
        self.emitted[rows, k] = False
        present = self._present_rows.get(len(rows))
        if present is None:  # a read-only view, shared by the blocks of that many rows
            present = self._present_rows[len(rows)] = np.broadcast_to(
                self.present, (len(rows), self.present.shape[0]))
        block = StepBlock(self.n_layers, self.steps[rows], self.epochs[rows],
                          self.clipped[rows, k], self.values[rows, k], present)
        self.histories[k].add(block, self.notable[rows, k])
        write_block = self._write_block[k]
        if write_block is not None:
            write_block(block)

    def hand_over_all(self) -> None:
        self._handed_at = time.monotonic()
        n = self.t + 1
        if n <= 0:
            return
        emitted = self.emitted[:n]
        members = np.flatnonzero(emitted.any(axis=0))
        shared = members[self._shared[members]]
        if len(shared):  # one copy of the stack's rows instead of one block per member
            cols = slice(None) if len(shared) == emitted.shape[1] else shared
            rows = _Shared(self.steps[:n].copy(), self.epochs[:n].copy(),
                           self.clipped[:n, cols].copy(), self.values[:n, cols].copy(),
                           emitted[:, cols].copy(), self.present)
            emitted[:, shared] = False
            for col, k in enumerate(shared.tolist()):
                self.histories[k].add_shared(rows, col)
        own = members[~self._shared[members]]
        if len(own):  # each its own block (for its sink), rows found for all at once
            marks = np.ascontiguousarray(emitted[:, own].T)
            for k, mark in zip(own.tolist(), marks, strict=True):
                self._hand_over_rows(k, np.flatnonzero(mark))

    def result_steps(self, k: int) -> Callable[[], list[StepRecord]]:
        """What builds member ``k``'s ``TrainingResult.steps`` (its rows handed over first:
        its history holds them as arrays from then on, and its sink has had them all)."""
        self.hand_over(k)
        return self.histories[k].steps
