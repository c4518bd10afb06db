"""The training loop: seeded mini-batch training that records pre-clip gradient telemetry.

Every step: forward -> loss -> backward -> record PRE-clip norms -> clip -> optimizer step ->
record weight/update norms and activation statistics -> feed the online monitor -> emit the
record to the sink. A NaN or an overflow is an outcome (``stop_reason="non_finite"``), never
an exception. What a run returns, :class:`TrainingResult`, is :mod:`core.training_result`
(re-exported here).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from core.clipping import clip_flat
from core.diagnostics.monitor import Monitor
from core.layout import FUSED_NORMS_MAX, norms_by_reduceat
from core.optimizers import make_optimizer
from core.problem import Problem
from core.recording import StepRecorder, n_values
from core.schedules import make_schedule
from core.snapshot import BestParameters, NetworkCopy
from core.spec import TrainingSpec
from core.telemetry import (
    EpochRecord,
    NonFiniteEvent,
    Sink,
    StopReason,
)
from core.training_result import TrainingResult

__all__ = ["Trainer", "TrainingResult"]

Array = np.ndarray


def _norm_segments(flat: Array, bounds: Array) -> Array:
    """Sum of squares of ``flat[bounds[k]:bounds[k+1]]`` for each k, as float64.

    Many small segments (deep narrow nets): one square + ``reduceat``; few large segments: one
    BLAS dot each. Accumulates in the training dtype, like torch's norms; if a float32 sum
    overflows it is recomputed in float64, so a finite gradient never reports an infinite norm.
    """
    n_seg = len(bounds) - 1
    if norms_by_reduceat(flat.size, n_seg):
        out = np.add.reduceat(np.square(flat), bounds[:-1]).astype(np.float64)
        if flat.dtype != np.float64 and not np.isfinite(out).all():
            out = np.add.reduceat(np.square(flat, dtype=np.float64), bounds[:-1])
        return out
    out = np.empty(n_seg, dtype=np.float64)
    for k in range(n_seg):
        seg = flat[int(bounds[k]):int(bounds[k + 1])]
        s = float(np.dot(seg, seg))
        if not math.isfinite(s):
            s = float(np.square(seg, dtype=np.float64).sum())
        out[k] = s
    return out



def _nan_or_inf(x: Array) -> str:
    return "nan" if np.isnan(x).any() else "inf"


class Trainer(Problem):
    """Trains the network a :class:`~core.spec.TrainingSpec` describes.

    Everything random (data, initialisation, shuffling) comes from one
    ``numpy.random.Generator`` seeded with ``spec.seed``.

    Parameters
    ----------
    spec : TrainingSpec
    max_runtime : float, optional
        Wall-clock budget in seconds; training stops with ``"max_runtime"`` when exceeded.
    telemetry : bool
        Record per-layer norms and activation statistics (default). When False only the loss,
        the global norm needed for clipping and the learning rate are recorded (benchmarks).
    monitor : bool
        Feed every step to the online :class:`core.diagnostics.Monitor` (default; needed for
        ``stop_on_explosion`` and live alerts). Requires ``telemetry``.
    keep_best : bool
        Keep a copy of the parameters at the lowest finite validation loss seen at an epoch's
        end (``self.best``; needs a validation split): ``core.Model.from_trainer(t, "best")``.
    """

    def __init__(self, spec: TrainingSpec, *, max_runtime: float | None = None,
                 telemetry: bool = True, monitor: bool = True, keep_best: bool = False) -> None:
        super().__init__(spec)
        self.keep_best = keep_best
        self.best: BestParameters | None = None
        self.use_monitor = monitor
        self.max_runtime = max_runtime
        self.telemetry = telemetry
        self.optimizer = make_optimizer(spec.optimizer, self.network.flat)
        self.total_steps = spec.total_steps()
        self.schedule = make_schedule(spec.schedule, spec.optimizer.lr, self.total_steps)
        self._y_train = self._targets(self.data.y_train)
        self._y_val = self._targets(self.data.y_val)
        layout = self.network.layout
        # Segment bounds: [W_0, rest_0, W_1, rest_1, ..., end]: weight-only and per-layer sums
        # of squares from one pass.
        bounds = []
        for i in range(layout.n_layers):
            bounds += [int(layout.weight_offsets[i]),
                       int(layout.weight_offsets[i] + layout.weight_sizes[i])]
        bounds.append(layout.size)
        self._bounds = np.asarray(bounds, dtype=np.int64)
        # The same bounds over the concatenation [weights | update] (both of size P).
        self._bounds2 = np.concatenate((self._bounds[:-1], self._bounds + layout.size))
        self._layer_ids = list(range(layout.n_layers))
        self._batch_buffers: dict[int, tuple[Array, Array]] = {}

    # ------------------------------------------------------------------ the loop
    def run(self, sink: Sink | None = None, *, keep_records: bool = True,
            max_records: int | None = None) -> TrainingResult:
        """Train per the spec; returns the history and why training stopped.

        ``keep_records=False`` keeps only the last record in ``result.steps`` (the sink still
        receives everything): for long runs whose history lives elsewhere. ``max_records``
        bounds the memory of a long run's kept history: past it, the kept records are thinned
        to every 2nd, 4th, ... step, always keeping the first and last step and every step
        with a non-finite value or a monitor alert (what a diagnosis needs).
        """
        # Overflow is data here: one errstate for the whole run (per-call errstate contexts
        # would cost more than the layers of a small network).
        with np.errstate(all="ignore"):
            return self._run(sink, keep_records, max_records)

    def _run(self, sink: Sink | None, keep_records: bool,
             max_records: int | None) -> TrainingResult:
        spec = self.spec
        net = self.network
        layout = net.layout
        X_train, y_train = self.data.X_train, self._y_train
        n_train = len(X_train)
        batch_size = min(spec.training.batch_size, n_train)
        record_every = spec.monitor.record_every
        stop_on_nf = spec.monitor.stop_on_non_finite
        want_acts = self.telemetry and spec.monitor.activation_stats
        monitor = Monitor(spec) if self.telemetry and self.use_monitor else None
        write_alert = getattr(sink, "write_alert", None)

        epochs: list[EpochRecord] = []
        alerts: list[Any] = []
        first_nf: NonFiniteEvent | None = None
        stop: StopReason | None = None
        step = 0
        total = self.total_steps
        t0 = time.monotonic()
        deadline = None if self.max_runtime is None else t0 + self.max_runtime
        best_val = np.inf
        bad_epochs = 0
        epoch = 0
        pending = False  # the current row is a step computed but not emitted yet
        pending_at = (0, 0, False)
        n_rec = layout.n_layers if self.telemetry else 0
        recorder = StepRecorder(n_rec, self._present_mask(n_rec, want_acts), sink,
                                keep_records=keep_records, max_records=max_records)
        build_records = monitor is not None

        while step < total and stop is None:
            order = self.rng.permutation(n_train) if spec.training.shuffle else None
            loss_sum = 0.0
            correct = 0.0
            seen = 0
            for start in range(0, n_train, batch_size):
                if step >= total:
                    break
                if order is None:
                    Xb, yb = X_train[start:start + batch_size], y_train[start:start + batch_size]
                else:
                    idx = order[start:start + batch_size]
                    Xb, yb = self._gather(X_train, y_train, idx)
                lr = self.schedule(step)
                out = net.forward(Xb)
                loss, dout = self._loss_fn(out, yb)
                net.backward(dout)
                grad = net.grad
                if self.telemetry:
                    gsq = _norm_segments(grad, self._bounds)
                    w_gsq = gsq[0::2]
                    layer_gsq = w_gsq + gsq[1::2]
                    total_gsq = float(layer_gsq.sum())
                else:
                    w_gsq = layer_gsq = _norm_segments(grad, layout.layer_offsets)
                    total_gsq = float(layer_gsq.sum())
                grad_norm = float(np.sqrt(total_gsq))
                clipped_norm, clipped = clip_flat(spec.clipping, grad, net.flat, layout,
                                                  layer_gsq)
                delta = self.optimizer.step(grad, lr)
                m = len(Xb)
                loss_sum += loss * m
                seen += m
                acc = self._accuracy(out, yb)
                if acc is not None:
                    correct += acc * m

                row = recorder.row
                if self.telemetry:
                    finite = self._fill_row(row, loss, lr, grad_norm, clipped_norm, layer_gsq,
                                            w_gsq, delta, out, want_acts)
                    nf_now = not finite
                else:
                    row[0], row[1], row[2], row[3] = loss, grad_norm, clipped_norm, lr
                    nf_now = not (math.isfinite(loss) and math.isfinite(grad_norm))
                clipped = bool(clipped)
                record = recorder.record(step, epoch, clipped) if build_records else None
                if nf_now and first_nf is None:
                    first_nf = self._locate_non_finite(step, loss, out, layer_gsq, want_acts)
                    write_nf = getattr(sink, "write_non_finite", None)
                    if write_nf is not None:  # one definition of it, live and final
                        write_nf(first_nf)

                if monitor is not None:
                    assert record is not None
                    new_alerts = monitor.observe(record)
                    if new_alerts:
                        alerts.extend(new_alerts)
                        if write_alert is not None:
                            recorder.hand_over()  # the steps before the alert are written first
                            for a in new_alerts:
                                write_alert(a)
                    if spec.monitor.stop_on_explosion and monitor.explosion_confirmed:
                        stop = "explosion"
                if nf_now and stop_on_nf:
                    stop = "non_finite"
                if deadline is not None and time.monotonic() > deadline:
                    stop = stop or "max_runtime"

                # The first, the last, every record_every-th and every non-finite step are
                # emitted; a step that turns out to be the last (the sink asks to stop after
                # receiving the previous one, or early stopping at the epoch end) is emitted then.
                pending, pending_at = True, (step, epoch, clipped)
                notable = nf_now or bool(monitor is not None and new_alerts)
                if step % record_every == 0 or step == total - 1 or stop is not None or nf_now:
                    recorder.emit(step, epoch, clipped, record, notable)
                    pending = False
                if sink is not None and stop is None:
                    stop = sink.should_stop()
                    if stop is not None and pending:
                        recorder.emit(*pending_at, record)
                        pending = False
                step += 1
                if stop is not None:
                    break
            # ---- end of epoch
            if seen:
                ep = self._epoch_record(epoch, step - 1, loss_sum / seen,
                                        correct / seen if self._is_classifier() else None)
                es_patience = spec.training.early_stopping_patience
                if es_patience is not None and ep.val_loss is not None and stop is None:
                    if ep.val_loss < best_val:
                        best_val, bad_epochs = ep.val_loss, 0
                    else:
                        bad_epochs += 1
                        if bad_epochs >= es_patience:
                            stop = "early_stop"
                            if pending:
                                recorder.emit(*pending_at, record)
                                pending = False
                epochs.append(ep)
                if self.keep_best:
                    self._keep_if_best(ep)
                if sink is not None:
                    recorder.hand_over()  # the epoch's steps are written before its figures
                    sink.write_epoch(ep)
            epoch += 1

        recorder.hand_over()
        return TrainingResult(
            spec=spec,
            steps=recorder.result_steps(),
            epochs=epochs,
            stop_reason=stop or "completed",
            steps_completed=step,
            total_steps=total,
            first_non_finite=first_nf,
            alerts=alerts,
            runtime_seconds=time.monotonic() - t0,
        )

    def _keep_if_best(self, ep: EpochRecord) -> None:
        """Copy the parameters when ``ep`` has the lowest finite validation loss so far."""
        v = ep.val_loss
        if v is not None and math.isfinite(v) and (self.best is None or v < self.best.val_loss):
            self.best = None  # free the older copy first
            try:
                self.best = BestParameters(NetworkCopy.of(self.network), ep.epoch, ep.step, v)
            except MemoryError:  # a copy is a convenience: never fail the run for it
                self.keep_best = False

    def _present_mask(self, n_layers: int, want_acts: bool) -> Array:
        """Which figures of a row apply: all but the activation statistics that do not."""
        present = np.ones(n_values(n_layers), dtype=bool)
        if n_layers:
            layer_part = present[4:].reshape(n_layers, 8)
            if want_acts:
                layer_part[:, 4:] = self.network.activation_stat_mask()
            else:
                layer_part[:, 4:] = False
        return present

    def _fill_row(self, row: Array, loss: float, lr: float, grad_norm: float,
                  clipped_norm: float, layer_gsq: Array, w_gsq: Array, delta: Array,
                  out: Array, want_acts: bool) -> bool:
        """Write the step's figures into ``row`` (norms after the update, activation
        statistics: a fixed handful of NumPy calls whatever the depth); True when every
        recorded number is finite."""
        net = self.network
        if net.flat.size <= FUSED_NORMS_MAX:  # one pass over [weights | update] for small nets
            both = _norm_segments(np.concatenate((net.flat, delta)), self._bounds2)
            wsq, usq = both[0:len(both) // 2:2], both[len(both) // 2::2]
        else:
            wsq = _norm_segments(net.flat, self._bounds)[0::2]
            usq = _norm_segments(delta, self._bounds)[0::2]
        L = len(layer_gsq)
        row[0], row[1], row[2], row[3] = loss, grad_norm, clipped_norm, lr
        layers = row[4:].reshape(L, 8)
        norms = layers[:, :4].T  # (4, L) view: grad, weight grad, weight, update norms
        np.sqrt(layer_gsq, out=norms[0])
        np.sqrt(w_gsq, out=norms[1])
        np.sqrt(wsq, out=norms[2])
        np.sqrt(usq, out=norms[3])
        check = loss + grad_norm + sum(norms[2].tolist())
        if want_acts:  # written into the row (its absent statistics stay NaN)
            stats = net.activation_stat_array(out, layers[:, 4:])
            check += sum(stats[:, 0].tolist())
        return math.isfinite(check)

    def _gather(self, X: Array, y: Array, idx: Array) -> tuple[Array, Array]:
        """``X[idx], y[idx]`` into buffers reused across steps (no per-step allocation)."""
        bufs = self._batch_buffers.get(len(idx))
        if bufs is None:
            bufs = (np.empty((len(idx), *X.shape[1:]), X.dtype),
                    np.empty((len(idx), *y.shape[1:]), y.dtype))
            self._batch_buffers[len(idx)] = bufs
        np.take(X, idx, axis=0, out=bufs[0])
        np.take(y, idx, axis=0, out=bufs[1])
        return bufs

    def _is_classifier(self) -> bool:
        return self.data.task == "classification"

    def _epoch_record(self, epoch: int, last_step: int, train_loss: float,
                      train_acc: float | None) -> EpochRecord:
        val_loss = val_acc = None
        if len(self.data.X_val):
            val_loss, val_acc = self.evaluate(self.data.X_val, self._y_val)
        return EpochRecord(epoch, last_step, float(train_loss), val_loss, val_acc, train_acc)

    def _locate_non_finite(self, step: int, loss: float, out: Array, layer_gsq: Array,
                           acts: bool) -> NonFiniteEvent:
        """Where the first non-finite value of this step arose, in computation order:
        activations (forward, by layer), the loss, gradients (backward: highest layer first),
        then the updated weights."""
        net = self.network
        if acts:
            for i in range(net.n_layers - 1):
                a = net.hidden_activation(i)
                if not np.isfinite(a).all():
                    return NonFiniteEvent(step, i, "activation", _nan_or_inf(a))  # type: ignore[arg-type]
        if not np.isfinite(out).all():  # the output layer's activations (logits)
            return NonFiniteEvent(step, net.n_layers - 1, "activation", _nan_or_inf(out))  # type: ignore[arg-type]
        if not np.isfinite(loss):
            return NonFiniteEvent(step, None, "loss", "nan" if np.isnan(loss) else "inf")
        for i in range(net.n_layers - 1, -1, -1):  # pre-clip sums of squares, as computed
            if not np.isfinite(layer_gsq[i]):
                return NonFiniteEvent(step, i, "gradient",
                                      "nan" if np.isnan(layer_gsq[i]) else "inf")
        layout = net.layout
        for i in range(net.n_layers):
            w = layout.layer_segment(net.flat, i)
            if not np.isfinite(w).all():
                return NonFiniteEvent(step, i, "weight", _nan_or_inf(w))  # type: ignore[arg-type]
        return NonFiniteEvent(step, None, "loss", "nan")
