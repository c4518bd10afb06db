"""A stacked member's records reach its sink as blocks of rows equal to its single run's.

:class:`core.batched.BatchedTrainer` writes every member's figures into one preallocated
``(steps, K, n_values)`` block and hands each member's rows to its sink's ``write_block``;
what a member's sink stores (the rows, in order, and where its epoch records and alerts fall
between them) is what the same sink stores from ``core.Trainer`` training that member alone.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest

from core import Trainer, TrainingSpec
from core.batched import BatchedTrainer
from core.recording import BLOCK_ROWS
from core.telemetry import BlockSink, EpochRecord, NonFiniteEvent, StepBlock, StepRecord, StopReason

RTOL = 1e-10


class LoggingBlockSink:
    """Keeps the blocks and the order of every call; may ask to stop at its n-th poll."""

    def __init__(self, stop_at_poll: int | None = None) -> None:
        self.blocks: list[StepBlock] = []
        self.calls: list[tuple[str, Any]] = []
        self.non_finite: NonFiniteEvent | None = None
        self.stop_at_poll = stop_at_poll
        self.polls = 0

    def rows(self) -> int:
        return sum(len(b) for b in self.blocks)

    def write_block(self, block: StepBlock) -> None:
        assert 0 < len(block) <= BLOCK_ROWS
        self.blocks.append(block)

    def write_steps(self, records: list[StepRecord]) -> None:  # pragma: no cover
        raise AssertionError("a block sink gets blocks")

    def write_epoch(self, record: EpochRecord) -> None:
        self.calls.append(("epoch", (record.epoch, record.step, self.rows())))

    def write_alert(self, finding: Any) -> None:
        self.calls.append(("alert", (finding.kind, finding.step, self.rows())))

    def write_non_finite(self, event: NonFiniteEvent) -> None:
        self.non_finite = event

    def should_stop(self) -> StopReason | None:
        self.polls += 1
        return "cancelled" if self.polls == self.stop_at_poll else None

    def stored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Steps, epochs, clipped flags, values and presence of every row received."""
        return tuple(np.concatenate([getattr(b, f) for b in self.blocks])  # type: ignore[return-value]
                     for f in ("steps", "epochs", "clipped", "values", "present"))


def assert_same_store(single: LoggingBlockSink, stacked: LoggingBlockSink) -> None:
    assert isinstance(stacked, BlockSink)
    a, b = single.stored(), stacked.stored()
    for name, x, y in zip(("steps", "epochs", "clipped"), a[:3], b[:3], strict=True):
        assert np.array_equal(x, y), name
    assert np.array_equal(a[4], b[4])  # the same figures apply
    np.testing.assert_allclose(b[3], a[3], rtol=RTOL, atol=0, equal_nan=True)
    assert stacked.calls == single.calls  # epochs and alerts after the same rows
    assert stacked.non_finite == single.non_finite


DEEP: dict[str, Any] = {
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
    "model": {"hidden": [{"units": 16}] * 6, "init": {"scheme": "normal", "std": 0.3}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 6, "batch_size": 16},
}


def _spec(lr: float, std: float, **changes: Any) -> TrainingSpec:
    spec = copy.deepcopy(DEEP)
    spec["optimizer"]["lr"] = lr
    spec["model"]["init"]["std"] = std
    spec.update(changes)
    return TrainingSpec.model_validate(spec)


SPECS = [
    _spec(0.001, 0.1),  # trains to the end
    _spec(0.3, 1.0),  # explodes: monitor alerts, stopped
    _spec(0.001, 1.0, monitor={"record_every": 3}),
    _spec(50.0, 1.0, monitor={"stop_on_explosion": False}),  # overflows: non-finite rows
]


@pytest.mark.parametrize(("keep_records", "max_records"), [(True, None), (True, 6), (False, None)],
                         ids=["all", "thinned", "last"])
def test_each_members_stored_history_equals_its_single_runs(
        keep_records: bool, max_records: int | None) -> None:
    sinks = [LoggingBlockSink(), LoggingBlockSink(), LoggingBlockSink(stop_at_poll=12),
             LoggingBlockSink()]
    stacked = BatchedTrainer(SPECS).run(sinks, keep_records=keep_records,
                                        max_records=max_records)
    kinds = set()
    for spec, sink, res in zip(SPECS, sinks, stacked, strict=True):
        own = LoggingBlockSink(stop_at_poll=sink.stop_at_poll)
        single = Trainer(spec).run(own, keep_records=keep_records, max_records=max_records)
        assert_same_store(own, sink)
        assert (res.stop_reason, res.steps_completed) == (single.stop_reason,
                                                          single.steps_completed)
        # the kept history (TrainingResult.steps) too, thinned or not
        assert [r.step for r in res.steps] == [r.step for r in single.steps]
        for x, y in zip(single.steps, res.steps, strict=True):
            assert (x.epoch, x.clipped, len(x.layers)) == (y.epoch, y.clipped, len(y.layers))
            assert [ly.dead_fraction is None for ly in x.layers] == [
                ly.dead_fraction is None for ly in y.layers]
            np.testing.assert_allclose([y.loss, y.grad_norm, *(ly.weight_norm for ly in y.layers)],
                                       [x.loss, x.grad_norm, *(ly.weight_norm for ly in x.layers)],
                                       rtol=RTOL, equal_nan=True)
        kinds.add(res.stop_reason)
    assert {"completed", "explosion", "cancelled"} <= kinds
    assert any(name == "alert" for s in sinks for name, _ in s.calls)
    assert sinks[3].non_finite is not None


def test_without_telemetry_a_block_holds_the_step_figures_only() -> None:
    specs = SPECS[:2]
    sinks = [LoggingBlockSink(), LoggingBlockSink()]
    BatchedTrainer(specs, telemetry=False, monitor=False).run(sinks)
    for spec, sink in zip(specs, sinks, strict=True):
        own = LoggingBlockSink()
        Trainer(spec, telemetry=False, monitor=False).run(own)
        assert sink.blocks[0].n_layers == 0 and sink.blocks[0].values.shape[1] == 4
        assert_same_store(own, sink)


def test_statistics_that_apply_to_some_layers_only_are_none_where_they_do_not() -> None:
    # relu (dead fraction), tanh and sigmoid (saturated fraction) layers in one network
    spec = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
            "model": {"hidden": [{"units": 8, "activation": "relu"},
                                 {"units": 8, "activation": "tanh"},
                                 {"units": 8, "activation": "sigmoid"}]},
            "training": {"epochs": 2, "batch_size": 16}}
    specs = [TrainingSpec.model_validate({**spec, "seed": s}) for s in (0, 1)]
    sinks = [LoggingBlockSink(), LoggingBlockSink()]
    stacked = BatchedTrainer(specs).run(sinks)
    for s, sink, res in zip(specs, sinks, stacked, strict=True):
        own = LoggingBlockSink()
        single = Trainer(s).run(own)
        assert_same_store(own, sink)
        for x, y in zip(single.steps, res.steps, strict=True):
            for lx, ly in zip(x.layers, y.layers, strict=True):
                for f in ("act_mean", "act_std", "dead_fraction", "saturated_fraction"):
                    a, b = getattr(lx, f), getattr(ly, f)
                    assert (a is None) == (b is None), f
                    if a is not None:
                        assert b == pytest.approx(a, rel=RTOL, nan_ok=True)
        last = res.steps[-1].layers
        assert [ly.dead_fraction is None for ly in last] == [False, True, True, True]
        assert [ly.saturated_fraction is None for ly in last] == [True, False, False, True]


@pytest.mark.parametrize("keep_records", [True, False])
def test_a_members_kept_history_is_a_plain_list_of_records(keep_records: bool) -> None:
    # without sinks the stack keeps the rows as arrays and builds the records when read
    specs = SPECS[:3]
    unread = BatchedTrainer(specs).run(keep_records=keep_records)
    pickled = [pickle.loads(pickle.dumps(r)) for r in unread]  # before anything read them
    for spec, res, back in zip(specs, BatchedTrainer(specs).run(keep_records=keep_records),
                               pickled, strict=True):
        single = Trainer(spec).run(keep_records=keep_records)
        steps = res.steps
        assert type(steps) is list and res.steps is steps  # built once
        assert all(type(r) is StepRecord for r in steps)
        assert [r.step for r in steps] == [r.step for r in single.steps]
        assert repr(back.steps) == repr(steps)  # NaN figures too
        assert repr(back.final_loss) == repr(res.final_loss)
    res = unread[0]
    res.steps = []  # an assigned list replaces the rows not read yet
    assert res.steps == [] and res.final_loss is None
