"""One member of a stacked run: the per-network bookkeeping of :class:`core.trainer.Trainer`.

:class:`core.batched.BatchedTrainer` computes all members' numbers at once; each member's
:class:`MemberRun` then does, with them, what the single trainer's loop does for its network:
the emitted and kept step records (``record_every``, ``max_records`` thinning), the online
monitor and its alerts, stop reasons, the sink's calls, epoch records and early stopping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.schedules import Schedule
from core.spec import TrainingSpec
from core.telemetry import EpochRecord, NonFiniteEvent, Sink, StepRecord, StopReason
from core.trainer import TrainingResult

__all__ = ["MemberRun"]


class MemberRun:
    """Member ``index``'s state through a stacked run."""

    def __init__(self, index: int, spec: TrainingSpec, sink: Sink | None,
                 rng: np.random.Generator, schedule: Schedule, data_index: int,
                 monitor: Any, keep_records: bool, max_records: int | None) -> None:
        self.index = index
        self.spec = spec
        self.sink = sink
        self.rng = rng
        self.schedule = schedule
        self.data_index = data_index
        self.monitor = monitor
        self.total = spec.total_steps()
        self.record_every = spec.monitor.record_every
        self.want_acts = spec.monitor.activation_stats
        self._write_alert = getattr(sink, "write_alert", None)
        self._keep_records = keep_records
        self._limit = max_records
        self._stride = 1
        self._important: set[int] = set()
        self.kept: list[StepRecord] = []
        self.epochs: list[EpochRecord] = []
        self.alerts: list[Any] = []
        self.first_nf: NonFiniteEvent | None = None
        self.stop: StopReason | None = None
        self.pending: StepRecord | None = None
        self.best_val = np.inf
        self.bad_epochs = 0
        self.order: np.ndarray | None = None
        self.loss_sum = 0.0
        self.correct = 0.0
        self.seen = 0

    def start_epoch(self, n_train: int) -> None:
        """Draw this epoch's batch order (as the trainer does) and reset the epoch sums."""
        self.order = self.rng.permutation(n_train) if self.spec.training.shuffle else None
        self.loss_sum = 0.0
        self.correct = 0.0
        self.seen = 0

    def add_batch(self, loss: float, acc: float | None, m: int) -> None:
        self.loss_sum += loss * m
        self.seen += m
        if acc is not None:
            self.correct += acc * m

    def emit(self, record: StepRecord, notable: bool = False) -> None:
        """Send ``record`` to the sink and keep it (thinned past ``max_records``)."""
        if self.sink is not None:
            self.sink.write_steps([record])
        kept = self.kept
        if not self._keep_records:
            kept[:] = [record]
            return
        if notable:
            self._important.add(record.step)
        if kept and kept[-1].step % self._stride and kept[-1].step not in self._important:
            kept.pop()  # the previous record was only kept as the latest one
        kept.append(record)
        if self._limit is not None and len(kept) > self._limit:
            self._stride *= 2
            kept[:] = [r for i, r in enumerate(kept)
                       if i == 0 or r.step % self._stride == 0 or r.step in self._important
                       or r is record]
            self._limit = max(self._limit, 2 * len(kept))

    def after_step(self, record: StepRecord, nf_now: bool, late: bool,
                   new_alerts: list[Any] | None = None, confirmed: bool = False) -> None:
        """Monitor, stop reasons, emission and the sink's stop request for one step.

        ``new_alerts`` and ``confirmed`` are the step's monitor outcome when the stack's
        :class:`core.batched_monitor.StackMonitor` observed it (this member has no monitor of
        its own then)."""
        if self.monitor is not None:
            new_alerts = self.monitor.observe(record)
            confirmed = self.monitor.explosion_confirmed
        if new_alerts:
            self.alerts.extend(new_alerts)
            if self._write_alert is not None:
                for a in new_alerts:
                    self._write_alert(a)
        if confirmed and self.spec.monitor.stop_on_explosion:
            self.stop = "explosion"
        if nf_now and self.spec.monitor.stop_on_non_finite:
            self.stop = "non_finite"
        if late:
            self.stop = self.stop or "max_runtime"
        step = record.step
        self.pending = record
        if (step % self.record_every == 0 or step == self.total - 1 or self.stop is not None
                or nf_now):
            self.emit(record, nf_now or bool(new_alerts))
            self.pending = None
        if self.sink is not None and self.stop is None:
            self.stop = self.sink.should_stop()
            if self.stop is not None and self.pending is not None:
                self.emit(self.pending)
                self.pending = None

    def end_epoch(self, epoch: int, last_step: int, val_loss: float | None,
                  val_acc: float | None, classifier: bool) -> None:
        """The epoch record, early stopping, and the sink's epoch call."""
        ep = EpochRecord(epoch, last_step, float(self.loss_sum / self.seen), val_loss, val_acc,
                         self.correct / self.seen if classifier else None)
        patience = self.spec.training.early_stopping_patience
        if patience is not None and ep.val_loss is not None and self.stop is None:
            if ep.val_loss < self.best_val:
                self.best_val, self.bad_epochs = ep.val_loss, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= patience:
                    self.stop = "early_stop"
                    if self.pending is not None:
                        self.emit(self.pending)
                        self.pending = None
        self.epochs.append(ep)
        if self.sink is not None:
            self.sink.write_epoch(ep)

    def result(self, steps_completed: int, runtime: float) -> TrainingResult:
        return TrainingResult(
            spec=self.spec, steps=self.kept, epochs=self.epochs,
            stop_reason=self.stop or "completed", steps_completed=steps_completed,
            total_steps=self.total, first_non_finite=self.first_nf, alerts=self.alerts,
            runtime_seconds=runtime)
