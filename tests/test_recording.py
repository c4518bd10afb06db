"""Records handed over as blocks of arrays are the records a per-record sink receives."""

from __future__ import annotations

import math
from typing import Any

import pytest

from core import MemorySink, Trainer, TrainingSpec
from core.recording import BLOCK_ROWS
from core.telemetry import BlockSink, EpochRecord, StepBlock, StepRecord, StopReason


class BlockMemorySink:
    """Keeps the blocks it is handed; can stop training after ``stop_after`` steps."""

    def __init__(self, stop_at_poll: int | None = None) -> None:
        self.blocks: list[StepBlock] = []
        self.epochs: list[tuple[int, int]] = []  # (epoch, steps received before it)
        self.stop_at_poll = stop_at_poll
        self.polls = 0
        self.handed: list[int] = []

    @property
    def steps(self) -> list[StepRecord]:
        return [r for b in self.blocks for r in b.records()]

    def write_block(self, block: StepBlock) -> None:
        # the trainer reuses nothing it handed over: keep the block as it is
        self.blocks.append(block)
        self.handed.append(len(block))

    def write_steps(self, records: list[StepRecord]) -> None:  # pragma: no cover
        raise AssertionError("a block sink gets blocks")

    def write_epoch(self, record: EpochRecord) -> None:
        self.epochs.append((record.epoch, sum(self.handed)))

    def should_stop(self) -> StopReason | None:
        """Polled once per step (as DatabaseSink reads its cancel flag)."""
        self.polls += 1
        return "cancelled" if self.polls == self.stop_at_poll else None


class PollingMemorySink(MemorySink):
    def __init__(self, stop_at_poll: int) -> None:
        super().__init__()
        self.stop_at_poll, self.polls = stop_at_poll, 0

    def should_stop(self) -> StopReason | None:
        self.polls += 1
        return "cancelled" if self.polls == self.stop_at_poll else None


def fields(r: StepRecord) -> tuple[Any, ...]:
    layers = tuple(tuple(getattr(ly, f) for f in ly.__slots__) for ly in r.layers)  # type: ignore[attr-defined]
    return (r.step, r.epoch, r.loss, r.grad_norm, r.clipped_grad_norm, r.lr, r.clipped, layers)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


SPECS = [
    {"data": {"source": "synthetic", "name": "spirals"}, "training": {"epochs": 4},
     "model": {"hidden": [{"units": 16, "activation": "relu"},
                          {"units": 8, "activation": "tanh", "batch_norm": True},
                          {"units": 8, "activation": "sigmoid"}]}},
    {"data": {"source": "synthetic", "name": "spirals"}, "dtype": "float32",
     "training": {"epochs": 3}, "monitor": {"record_every": 7, "activation_stats": False},
     "model": {"hidden": [{"units": 32, "activation": "relu"}]}},
    {"data": {"source": "synthetic", "name": "spirals"}, "training": {"epochs": 2},
     "model": {"hidden": [{"units": 8, "activation": "tanh"}]},
     "optimizer": {"name": "sgd", "lr": 1e4}},  # overflows: non-finite records
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("telemetry", [True, False])
def test_a_block_sink_receives_bit_for_bit_the_records_a_record_sink_receives(
        spec: dict[str, Any], telemetry: bool) -> None:
    s = TrainingSpec.model_validate(spec)
    records, blocks = MemorySink(), BlockMemorySink()
    assert isinstance(blocks, BlockSink)
    a = Trainer(s, telemetry=telemetry, monitor=telemetry).run(records)
    b = Trainer(s, telemetry=telemetry, monitor=telemetry).run(blocks)
    assert len(records.steps) == len(blocks.steps) > 0
    assert all(same(fields(x), fields(y)) for x, y in zip(records.steps, blocks.steps, strict=True))
    assert all(same(fields(x), fields(y)) for x, y in zip(a.steps, b.steps, strict=True))
    assert (a.stop_reason, a.steps_completed) == (b.stop_reason, b.steps_completed)
    assert max(blocks.handed) <= BLOCK_ROWS
    # every epoch's figures arrive after the steps of that epoch
    for epoch, received in blocks.epochs:
        assert all(r.epoch <= epoch for r in blocks.steps[:received])


@pytest.mark.parametrize("stop_at_poll", [1, 6, BLOCK_ROWS + 3])
def test_a_block_sink_that_asks_to_stop_gets_the_last_step_as_a_record_sink_does(
        stop_at_poll: int) -> None:
    s = TrainingSpec.model_validate({**SPECS[0], "monitor": {"record_every": 4},
                                     "training": {"epochs": 10}})
    records = PollingMemorySink(stop_at_poll)
    a = Trainer(s).run(records, keep_records=False)
    blocks = BlockMemorySink(stop_at_poll)
    b = Trainer(s).run(blocks, keep_records=False)
    assert (a.stop_reason, a.steps_completed) == ("cancelled", stop_at_poll)
    assert (b.stop_reason, b.steps_completed) == ("cancelled", stop_at_poll)
    assert [fields(r) for r in a.steps] == [fields(r) for r in b.steps]
    assert [fields(r) for r in records.steps] == [fields(r) for r in blocks.steps]
    assert blocks.steps[-1].step == stop_at_poll - 1  # the stopping step is emitted
