"""Batched training: many members of one architecture trained as one stacked computation.

A sweep over learning rate x initialisation (x seed, clipping threshold, schedule) trains
networks that differ only in numbers. :class:`BatchedTrainer` trains K such members at once:
parameters ``(K, n_params)`` (:class:`core.stacked.StackedMLP`), one batched ``matmul`` per
layer, the optimizer's elementwise rules over all rows with a ``(K, 1)`` learning rate, and
per-member clipping thresholds, optimizer state and random generators. Each member gets
exactly what :class:`core.trainer.Trainer` would give it alone: the same initial weights and
batches (from its own generator, seeded from its spec), the same step records, epoch records,
monitor alerts, sink calls and stop reason. The online monitor runs over the whole stack as
arrays (:class:`core.batched_monitor.StackMonitor`, alert for alert the scalar
:class:`core.Monitor`). A member that stops (non-finite values, a confirmed explosion, its
sink's request, early stopping, its last step) is taken out of the stack on its own; the
others go on unaffected.

Which specs can share a stack is :func:`stack_key` (:mod:`core.stack_key`, re-exported here);
:func:`train_specs` groups any list of specs by it and trains each group. The members' data and
batches are :mod:`core.stack_data`, a step's per-layer figures :mod:`core.stack_figures`, the
epochs' sums and validation :mod:`core.stack_epochs`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.batched_monitor import StackMonitor
from core.clipping import BatchedClipper
from core.data import Dataset
from core.losses import BATCHED_LOSSES, accuracy_batched
from core.member import MemberRun
from core.network import MLP
from core.optimizers import make_optimizer
from core.schedules import Constant, make_schedule
from core.snapshot import NetworkCopy
from core.spec import TrainingSpec
from core.stack_data import load_member_data, shared_batches, step_batch
from core.stack_epochs import EpochSums, validate
from core.stack_figures import UpdateSums, layer_figures, locate_non_finite, present_mask
from core.stack_key import stack_key
from core.stack_recording import StackRecorder
from core.stacked import StackedMLP, initial_parameters, segment_sumsq_batched
from core.telemetry import Sink
from core.trainer import TrainingResult

__all__ = ["BatchedTrainer", "stack_key", "train_specs"]

Array = np.ndarray


class BatchedTrainer:
    """Trains members that share :func:`stack_key` as one stacked computation.

    Parameters
    ----------
    specs : list of TrainingSpec
        The members, in order; results come back in the same order.
    max_runtime, telemetry, monitor
        As for :class:`core.trainer.Trainer` (``max_runtime`` bounds the whole stack).
    """

    def __init__(self, specs: Sequence[TrainingSpec], *, max_runtime: float | None = None,
                 telemetry: bool = True, monitor: bool = True) -> None:
        if not specs:
            raise ValueError("BatchedTrainer needs at least one spec")
        keys = {stack_key(s) for s in specs}
        if len(keys) != 1:
            raise ValueError("these specs cannot share a stack (architecture, dtype, loss, data "
                             "shape, batch size, optimizer settings other than lr or clipping "
                             "mode differ); group them with core.batched.train_specs")
        self.specs = list(specs)
        self.max_runtime = max_runtime
        self.telemetry = telemetry
        self.use_monitor = monitor
        first = self.specs[0]
        self.loss_name = first.loss or "mse"
        out_units = first.layer_sizes()[-1]
        # Every member as Trainer builds it: one generator seeded from its spec, the data
        # (loaded once per data key; the generator continues from the state loading left),
        # then the initial weights: the first member as a whole network (the architecture),
        # the others' parameters drawn as that network draws them, into the stack's buffer.
        self._data, self.data_index, self.rngs = load_member_data(self.specs, out_units)
        proto = MLP(first, self.rngs[0])
        flat = np.empty((len(self.specs), proto.layout.size), dtype=proto.dtype)
        flat[0] = proto.flat
        for k in range(1, len(self.specs)):
            initial_parameters(self.specs[k], self.rngs[k], proto, flat[k])
        self.network = StackedMLP([proto], flat)
        self._stat_mask = proto.activation_stat_mask()
        self.optimizer = make_optimizer(first.optimizer, self.network.flat)
        self.clipper = BatchedClipper([s.clipping for s in self.specs])
        self.schedules = [make_schedule(s.schedule, s.optimizer.lr, s.total_steps())
                          for s in self.specs]
        self._loss_fn = BATCHED_LOSSES[self.loss_name]
        layout = self.network.layout
        bounds: list[int] = []
        for i in range(layout.n_layers):
            bounds += [int(layout.weight_offsets[i]),
                       int(layout.weight_offsets[i] + layout.weight_sizes[i])]
        bounds.append(layout.size)
        self._bounds = np.asarray(bounds, dtype=np.int64)
        self._classifier = self._data[0].dataset.task == "classification"
        self._active: list[MemberRun] = []
        self._monitor: StackMonitor | None = None
        self.final_networks: dict[int, NetworkCopy] = {}  # member -> parameters at its end
        self._mse_labels = self.loss_name == "mse" and self._classifier
        K = len(self.specs)
        # per member (indexed by member, not by stack row): what the common step decides with
        self._record_every = np.array([s.monitor.record_every for s in self.specs])
        self._total = np.array([s.total_steps() for s in self.specs])
        self._sums = EpochSums(K)
        self._rows = np.arange(K)  # the member index of each stack row
        self._recorder: StackRecorder | None = None
        self._constant_lrs = all(isinstance(s, Constant) for s in self.schedules)
        self._lr_col: Array | None = None  # the constant rates' column (see _lr_column)
        self._emit_rule: tuple[int, int] | None = None  # see _due

    # ------------------------------------------------------------------ the loop
    def run(self, sinks: Sequence[Sink | None] | None = None, *, keep_records: bool = True,
            max_records: int | None = None) -> list[TrainingResult]:
        """Train every member; returns one :class:`TrainingResult` per spec, in order.

        ``sinks[k]`` receives member k's records exactly as a sink given to
        ``Trainer(specs[k]).run`` would; ``keep_records`` and ``max_records`` as there.
        """
        sinks = list(sinks) if sinks is not None else [None] * len(self.specs)
        if len(sinks) != len(self.specs):
            raise ValueError(f"{len(self.specs)} specs but {len(sinks)} sinks")
        with np.errstate(all="ignore"):
            return self._run(sinks, keep_records, max_records)

    def _run(self, sinks: list[Sink | None], keep_records: bool,
             max_records: int | None) -> list[TrainingResult]:
        t0 = time.monotonic()
        deadline = None if self.max_runtime is None else t0 + self.max_runtime
        n_rec = self.network.n_layers if self.telemetry else 0
        rec = self._recorder = StackRecorder(
            len(self.specs), n_rec,
            present_mask(n_rec, self._stat_mask, self.specs[0].monitor.activation_stats), sinks,
            keep_records=keep_records, max_records=max_records)
        self._has_sink = np.array([s is not None for s in sinks], dtype=bool)
        self._any_sink = bool(self._has_sink.any())
        members = [
            MemberRun(k, spec, sinks[k], self.rngs[k], self.schedules[k], self.data_index[k],
                      rec)
            for k, spec in enumerate(self.specs)]
        self._monitor = (StackMonitor(self.specs) if self.telemetry and self.use_monitor
                         else None)
        results: list[TrainingResult | None] = [None] * len(members)
        self._active = list(members)  # in stack row order
        n_train = self.specs[0].n_train_samples()
        batch_size = min(self.specs[0].training.batch_size, n_train)
        step = 0
        epoch = 0
        while self._active:
            MemberRun.start_epochs(self._active, n_train)
            rix = self._row_index()
            self._sums.start(rix)
            shared = shared_batches(self._active)
            first_end = min(m.total for m in self._active)
            for start in range(0, n_train, batch_size):
                # members past their last step, then those that stopped at the previous step,
                # leave as the single trainer's loop does: epoch record, then out
                if step >= first_end:
                    done = [m for m in self._active if step >= m.total]
                    self._end_epoch(done, epoch, step)
                    self._remove(done, step, results, t0)
                    if not self._active:
                        break
                    shared = shared_batches(self._active)
                    first_end = min(m.total for m in self._active)
                Xb, yb = step_batch(self._active, self._data, shared, start, batch_size)
                maybe_stopped = self._step(step, epoch, Xb, yb, deadline)
                step += 1
                # a member stops only where _step took its own path (or polled its sink)
                stopped = ([m for m in self._active if m.stop is not None] if maybe_stopped
                           else None)
                if stopped:
                    self._end_epoch(stopped, epoch, step)
                    self._remove(stopped, step, results, t0)
                    if not self._active:
                        break
                    shared = shared_batches(self._active)
                    first_end = min(m.total for m in self._active)
            if not self._active:
                break
            self._end_epoch(self._active, epoch, step)
            ended = [m for m in self._active if m.stop is not None or step >= m.total]
            if ended:
                self._remove(ended, step, results, t0)
            epoch += 1
        return [r for r in results if r is not None]

    def member_data(self, k: int) -> Dataset:
        """Member ``k``'s data set (with the standardisation its pipeline applied)."""
        return self._data[self.data_index[k]].dataset

    # ------------------------------------------------------------------ one step
    def _lrs(self, active: list[MemberRun], step: int) -> list[float]:
        if self._constant_lrs:
            return [m.schedule.base_lr for m in active]
        return [m.schedule.base_lr if isinstance(m.schedule, Constant) else m.schedule(step)
                for m in active]

    def _row_index(self) -> Array | slice:
        """The stack rows' places in the per-member arrays: a slice while every member is in
        the stack (rows in member order; the same elements as the index array, cheaper)."""
        return slice(None) if len(self._rows) == len(self.specs) else self._rows

    def _lr_column(self, step: int) -> Array:
        """The active members' learning rates as a float64 ``(K, 1)`` column (kept while the
        rates are constant and the stack unchanged)."""
        if self._constant_lrs:
            col = self._lr_col
            if col is None or len(col) != len(self._active):
                col = self._lr_col = np.asarray(self._lrs(self._active, step),
                                                dtype=np.float64)[:, None]
            return col
        return np.asarray(self._lrs(self._active, step), dtype=np.float64)[:, None]

    def _step(self, step: int, epoch: int, Xb: Array, yb: Array,
              deadline: float | None) -> bool:
        """One training step of the stack; returns whether some member may have stopped
        (one took its own path or its sink was asked)."""
        active = self._active
        net = self.network
        rows = self._rows
        rix = self._row_index()
        lr_col = self._lr_column(step)
        out = net.forward(Xb)
        losses, dout = self._loss_fn(out, yb)
        net.backward(dout)
        G = net.grad
        if self.telemetry:
            gsq = segment_sumsq_batched(G, self._bounds)
            w_gsq = gsq[:, 0::2]
            layer_gsq = w_gsq + gsq[:, 1::2]
        else:
            w_gsq = layer_gsq = segment_sumsq_batched(G, net.layout.layer_offsets)
        grad_norm = np.sqrt(layer_gsq.sum(axis=1))
        clipped_norm, clipped = self.clipper(G, net.flat, net.layout, layer_gsq, grad_norm)
        # the norms of the new weights and of the update, group by group (the change itself
        # is not kept)
        update_sums = (UpdateSums(len(active), self._bounds, G.shape[1]) if self.telemetry
                       else None)
        self.optimizer.step_groups(G, lr_col, update_sums)
        m_rows = out.shape[1]
        loss64 = losses.astype(np.float64, copy=False)
        self._sums.add(rix, loss64, self._accuracy(out, yb), m_rows)
        late = deadline is not None and time.monotonic() > deadline

        rec = self._recorder
        assert rec is not None
        rec.begin(step, epoch)
        K, L = len(active), net.n_layers
        vals = np.empty((K, rec.values.shape[2]))
        vals[:, 0], vals[:, 1], vals[:, 2], vals[:, 3] = (loss64, grad_norm, clipped_norm,
                                                          lr_col[:, 0])
        a_std = None
        if update_sums is not None:
            assert update_sums.sums is not None
            finite, a_std = layer_figures(net, vals, update_sums.sums, layer_gsq, w_gsq, out,
                                          loss64, grad_norm,
                                          self.specs[0].monitor.activation_stats)
        else:
            finite = np.isfinite(loss64) & np.isfinite(grad_norm)
        rec.write(rows, vals, clipped)
        nf = ~finite

        alerts: dict[int, list[Any]] = {}
        slow = nf.copy()  # members something happened to: the member's own bookkeeping
        if self._monitor is not None:
            layers = vals[:, 4:].reshape(K, L, 8)
            alerts = self._monitor.observe(
                step, loss64, grad_norm, layers[:, :, 0], layers[:, :, 2], layers[:, :, 3],
                a_std, lambda r: rec.record(int(rows[r])))
            confirmed = self._monitor.confirmed
            slow |= confirmed
            if alerts:
                slow[list(alerts)] = True
        else:
            confirmed = np.zeros(K, dtype=bool)
        if late:
            slow[:] = True
        # the common case, for the whole stack at once: which quiet members emit this step
        slow_rows = np.flatnonzero(slow).tolist()
        quiet = rows[~slow] if slow_rows else rows
        polled = False
        if len(quiet):
            due = (quiet[(step % self._record_every[quiet] == 0)
                         | (step == self._total[quiet] - 1)] if slow_rows
                   else self._due(step))
            if len(due):
                rec.emit(due)
            # then their sinks' stop requests, as after any step (MemberRun.after_step)
            if self._any_sink:
                for r in np.flatnonzero(self._has_sink[rows] & ~slow).tolist():
                    active[r].poll_sink()
                    polled = True
        for r in slow_rows:
            m = active[r]
            nf_now = bool(nf[r])
            if nf_now and m.first_nf is None:
                m.found_non_finite(locate_non_finite(net, r, step, float(loss64[r]), out,
                                                     layer_gsq, m.want_acts))
            m.after_step(step, nf_now, late, alerts.get(r), bool(confirmed[r]))
        return polled or bool(slow_rows)

    def _due(self, step: int) -> Array:
        """The members whose rows are emitted at ``step`` when all are quiet: every
        ``record_every``-th step and the last (one rule for the stack when they share it)."""
        rule = self._emit_rule
        if rule is None:
            each, totals = self._record_every[self._rows], self._total[self._rows]
            uniform = bool((each == each[0]).all() and (totals == totals[0]).all())
            rule = self._emit_rule = (int(each[0]), int(totals[0])) if uniform else (0, 0)
        every, total = rule
        if every:
            return self._rows if step % every == 0 or step == total - 1 else self._rows[:0]
        rows = self._rows
        return rows[(step % self._record_every[rows] == 0) | (step == self._total[rows] - 1)]

    def _accuracy(self, out: Array, yb: Array) -> Array | None:
        if self._mse_labels:
            return np.mean(out.argmax(axis=2) == yb.argmax(axis=-1), axis=-1)
        return accuracy_batched(out, yb, self.loss_name)

    # ------------------------------------------------------------------ epochs and exits
    def _end_epoch(self, members: list[MemberRun], epoch: int, step: int) -> None:
        """Epoch records (validation in inference mode) of ``members``, still in the stack."""
        row_of = {id(m): r for r, m in enumerate(self._active)}
        self._sums.hand_over(members)
        by_data: dict[int, list[MemberRun]] = {}
        for m in members:
            if m.seen:
                by_data.setdefault(m.data_index, []).append(m)
        for d, group in by_data.items():
            rows = np.asarray([row_of[id(m)] for m in group], dtype=np.intp)
            val_loss, val_acc = validate(self.network, self._data[d], rows, self._loss_fn,
                                         self._accuracy)
            for m, vl, va in zip(group, val_loss, val_acc, strict=True):
                m.end_epoch(epoch, step - 1, vl, va, self._classifier)

    def _remove(self, leaving: list[MemberRun], step: int,
                results: list[TrainingResult | None], t0: float) -> None:
        """Finish ``leaving`` and take them out of the stack (parameters, optimizer state,
        clipping thresholds); the others' rows move up, untouched."""
        gone = {id(m) for m in leaving}
        for m in leaving:
            results[m.index] = m.result(step, time.monotonic() - t0)
        for r, m in enumerate(self._active):
            if id(m) in gone:
                self.final_networks[m.index] = NetworkCopy.of(self.network, row=r)
        keep = [r for r, m in enumerate(self._active) if id(m) not in gone]
        if keep:
            rows = np.asarray(keep, dtype=np.intp)
            self.optimizer.keep_rows(rows)
            self.network.keep_rows(rows, flat=self.optimizer.params)
            self.clipper.keep_rows(rows)
            if self._monitor is not None:
                self._monitor.keep_rows(rows)
        self._active = [self._active[r] for r in keep]
        self._rows = self._rows[keep]
        self._lr_col = None
        self._emit_rule = None


def train_specs(specs: Sequence[TrainingSpec], sinks: Sequence[Sink | None] | None = None,
                **options: Any) -> list[TrainingResult]:
    """Train any specs: grouped by :func:`stack_key`, each group as one stack; results in the
    order of ``specs``. ``options`` go to :class:`BatchedTrainer` (``max_runtime``,
    ``telemetry``, ``monitor``)."""
    sinks = list(sinks) if sinks is not None else [None] * len(specs)
    groups: dict[str, list[int]] = {}
    for k, spec in enumerate(specs):
        groups.setdefault(stack_key(spec), []).append(k)
    results: list[TrainingResult | None] = [None] * len(specs)
    for ks in groups.values():
        trainer = BatchedTrainer([specs[k] for k in ks], **options)
        for k, res in zip(ks, trainer.run([sinks[k] for k in ks]), strict=True):
            results[k] = res
    return [r for r in results if r is not None]
