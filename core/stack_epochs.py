"""A stack's epochs per member: the running sums of the training steps and the validation.

:class:`EpochSums` keeps, for every member of a stack, the sums its epoch record is made of
(float64, as the single trainer's) and hands them to the member at the epoch's end;
:func:`validate` scores members that share a data set on its validation split, in
inference mode.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.losses import BatchedLossFn
from core.member import MemberRun
from core.stack_data import MemberData
from core.stacked import StackedMLP

__all__ = ["EpochSums", "validate"]

Array = np.ndarray
_EVERY = slice(None)


class EpochSums:
    """Each member's loss sum, correct count and examples seen over its current epoch,
    indexed by member (not by stack row)."""

    def __init__(self, n_members: int) -> None:
        self.loss_sum = np.zeros(n_members)
        self.correct = np.zeros(n_members)
        self.seen = np.zeros(n_members, dtype=np.int64)
        self._tmp = np.empty(n_members)

    def start(self, rix: Array | slice) -> None:
        """A new epoch for the members at ``rix``."""
        self.loss_sum[rix] = 0.0
        self.correct[rix] = 0.0
        self.seen[rix] = 0

    def add(self, rix: Array | slice, losses: Array, accuracy: Array | None,
            m_rows: int) -> None:
        """One step's mean losses (float64) and accuracies over ``m_rows`` examples."""
        if isinstance(rix, slice) and rix == _EVERY:  # the whole stack: in place, no copies
            tmp = self._tmp
            # float64, as the single trainer's sums: the product, then the sum
            self.loss_sum += np.multiply(losses, m_rows, out=tmp, dtype=np.float64)
            self.seen += m_rows
            if accuracy is not None:
                self.correct += np.multiply(accuracy, m_rows, out=tmp, dtype=np.float64)
            return
        self.loss_sum[rix] += losses * m_rows
        self.seen[rix] += m_rows
        if accuracy is not None:
            self.correct[rix] += accuracy.astype(np.float64, copy=False) * m_rows

    def hand_over(self, members: list[MemberRun]) -> None:
        """Set each member's epoch sums to those kept for it."""
        loss_sum, correct, seen = self.loss_sum.tolist(), self.correct.tolist(), self.seen.tolist()
        for m in members:
            k = m.index
            m.loss_sum, m.correct, m.seen = loss_sum[k], correct[k], seen[k]


def validate(network: StackedMLP, data: MemberData, rows: Array,
             loss_fn: BatchedLossFn,
             accuracy: Callable[[Array, Array], Array | None]
             ) -> tuple[list[float | None], list[float | None]]:
    """Validation loss and accuracy of stack rows ``rows`` on ``data`` (in inference mode),
    one per row; None where there is no validation split (or no accuracy)."""
    val_loss: list[float | None] = [None] * len(rows)
    val_acc: list[float | None] = [None] * len(rows)
    if len(data.dataset.X_val):
        out = network.predict(data.dataset.X_val, rows)
        losses, _ = loss_fn(out, data.y_val)
        acc = accuracy(out, data.y_val)
        val_loss = losses.astype(np.float64, copy=False).tolist()  # Python floats, exact
        if acc is not None:
            val_acc = acc.astype(np.float64, copy=False).tolist()
    return val_loss, val_acc
