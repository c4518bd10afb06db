"""One member of a stacked run: the per-network bookkeeping of :class:`core.trainer.Trainer`.

:class:`core.batched.BatchedTrainer` computes all members' numbers at once and decides the
common case (which rows are emitted) for the whole stack with array operations; a member's
:class:`MemberRun` does, when something happens to it, what the single trainer's loop does for
its network: alerts and the sink's alert and non-finite calls, stop reasons, the sink's stop
request, epoch records and early stopping. Its emitted rows live in the stack's
:class:`core.stack_recording.StackRecorder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from core.schedules import Schedule
from core.spec import TrainingSpec
from core.stack_recording import StackRecorder
from core.telemetry import EpochRecord, NonFiniteEvent, Sink, StopReason
from core.trainer import TrainingResult

__all__ = ["MemberRun"]


class MemberRun:
    """Member ``index``'s state through a stacked run."""

    def __init__(self, index: int, spec: TrainingSpec, sink: Sink | None,
                 rng: np.random.Generator, schedule: Schedule, data_index: int,
                 recorder: StackRecorder) -> None:
        self.index = index
        self.spec = spec
        self.sink = sink
        self.rng = rng
        self.schedule = schedule
        self.data_index = data_index
        self.recorder = recorder
        self.total = spec.total_steps()
        self.record_every = spec.monitor.record_every
        self.want_acts = spec.monitor.activation_stats
        self._write_alert = getattr(sink, "write_alert", None)
        self._write_nf = getattr(sink, "write_non_finite", None)
        self.epochs: list[EpochRecord] = []
        self.alerts: list[Any] = []
        self.first_nf: NonFiniteEvent | None = None
        self.stop: StopReason | None = None
        self.best_val = np.inf
        self.bad_epochs = 0
        self.order: np.ndarray | None = None
        self.loss_sum = 0.0
        self.correct = 0.0
        self.seen = 0

    def start_epoch(self, n_train: int) -> None:
        """Draw this epoch's batch order (as the trainer does)."""
        self.order = self.rng.permutation(n_train) if self.spec.training.shuffle else None

    @staticmethod
    def start_epochs(members: list[MemberRun], n_train: int) -> None:
        """:meth:`start_epoch` for each of ``members``, drawing once for the members whose
        generators are in the same state (one seed, the same draws so far: a sweep's usual
        case): the others share that order and their generators take the state the draw
        left, as if each had drawn it."""
        drawn: dict[tuple[Any, ...], tuple[Mapping[str, Any], np.ndarray]] = {}
        for m in members:
            if not m.spec.training.shuffle:
                m.order = None
                continue
            gen = m.rng.bit_generator
            state = gen.state
            if state["bit_generator"] != "PCG64":  # default_rng's; any other draws its own
                m.start_epoch(n_train)
                continue
            key = (state["state"]["state"], state["state"]["inc"], state["has_uint32"],
                   state["uinteger"])
            seen = drawn.get(key)
            if seen is None:
                m.start_epoch(n_train)
                assert m.order is not None
                drawn[key] = (gen.state, m.order)
            else:
                gen.state, m.order = seen

    def found_non_finite(self, event: NonFiniteEvent) -> None:
        self.first_nf = event
        if self._write_nf is not None:  # one definition of it, live and final
            self._write_nf(event)

    def _emit(self, notable: bool = False) -> None:
        self.recorder.emit(np.array([self.index]), notable)

    @property
    def pending(self) -> bool:
        """The current step's row is computed but not emitted."""
        return bool(self.recorder.pending[self.index])

    def after_step(self, step: int, nf_now: bool, late: bool,
                   new_alerts: list[Any] | None = None, confirmed: bool = False) -> None:
        """The monitor's outcome, stop reasons, emission and the sink's stop request for one
        step (``new_alerts`` and ``confirmed``: the stack monitor's findings for this member)."""
        if new_alerts:
            self.alerts.extend(new_alerts)
            if self._write_alert is not None:
                self.recorder.hand_over(self.index)  # the steps before the alert first
                for a in new_alerts:
                    self._write_alert(a)
        if confirmed and self.spec.monitor.stop_on_explosion:
            self.stop = "explosion"
        if nf_now and self.spec.monitor.stop_on_non_finite:
            self.stop = "non_finite"
        if late:
            self.stop = self.stop or "max_runtime"
        if (step % self.record_every == 0 or step == self.total - 1 or self.stop is not None
                or nf_now):
            self._emit(nf_now or bool(new_alerts))
        if self.sink is not None and self.stop is None:
            self.poll_sink()

    def poll_sink(self) -> None:
        """The sink's stop request after a step (this step's row emitted if it stops)."""
        assert self.sink is not None
        self.stop = self.sink.should_stop()
        if self.stop is not None and self.pending:
            self._emit()

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
                    if self.pending:
                        self._emit()
        self.epochs.append(ep)
        if self.sink is not None:
            self.recorder.hand_over(self.index)  # the epoch's steps before its figures
            self.sink.write_epoch(ep)

    def result(self, steps_completed: int, runtime: float) -> TrainingResult:
        result = TrainingResult(
            spec=self.spec, steps=[], epochs=self.epochs,
            stop_reason=self.stop or "completed", steps_completed=steps_completed,
            total_steps=self.total, first_non_finite=self.first_nf, alerts=self.alerts,
            runtime_seconds=runtime)
        result.defer_steps(self.recorder.result_steps(self.index))  # built when first read
        return result
