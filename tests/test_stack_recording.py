"""core.stack_recording: a member's kept history, built in one pass from all its hand-overs,
holds the records block-by-block building gives, and leaves the garbage collector as found."""

from __future__ import annotations

import gc
import weakref
from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from core import stack_recording
from core.recording import n_values
from core.stack_recording import StackRecorder
from core.stack_records import part_of, records_of, records_of_parts
from core.telemetry import LayerRecord, StepBlock, StepRecord


def _block(rng: np.random.Generator, start: int, n: int, present: np.ndarray) -> StepBlock:
    values = rng.normal(size=(n, len(present)))
    values[rng.random(values.shape) < 0.05] = np.nan
    values[:, ~present] = np.nan
    return StepBlock(3, np.arange(start, start + n), np.arange(start, start + n) // 7,
                     rng.random(n) < 0.5, values,
                     np.broadcast_to(present, (n, len(present))))


def test_parts_joined_give_the_records_of_each_block() -> None:
    rng = np.random.default_rng(0)
    present = np.ones(n_values(3), dtype=bool)
    present[4 + 6::8] = False  # dead_fraction absent in every layer
    other = present.copy()
    other[4 + 8 + 7] = False  # a block whose layer 1 also lacks saturated_fraction
    blocks = [_block(rng, 0, 5, present), _block(rng, 5, 0, present),
              _block(rng, 5, 9, present.copy()), _block(rng, 14, 4, other),
              _block(rng, 18, 3, present)]
    want = [r for b in blocks for r in records_of(b)]
    got = records_of_parts(3, [part_of(b) for b in blocks])
    assert repr(got) == repr(want)  # NaN figures and None where absent too
    assert [len(r.layers) for r in got] == [3] * 21
    assert len({id(r.layers) for r in got}) == len(got)  # a list of its own each
    # a selection of rows of a block
    assert repr(records_of_parts(3, [part_of(blocks[2], [0, 3, 8])])) == repr(
        [want[5], want[8], want[13]])


@pytest.mark.parametrize("enabled", [True, False])
def test_building_records_leaves_the_collector_as_found(enabled: bool) -> None:
    rng = np.random.default_rng(1)
    block = _block(rng, 0, 6, np.ones(n_values(3), dtype=bool))
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        assert len(records_of(block)) == 6
        assert gc.isenabled() is enabled
        with pytest.raises(ValueError):  # a present row of the wrong length
            records_of_parts(3, [(*part_of(block)[:4], np.ones(2, dtype=bool))])
        assert gc.isenabled() is enabled
    finally:
        if was:
            gc.enable()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_records_are_built_without_collections_of_them_and_no_cycle_is_lost() -> None:
    rng = np.random.default_rng(2)
    block = _block(rng, 0, 400, np.ones(n_values(3), dtype=bool))
    if not gc.isenabled():  # pragma: no cover (the suite runs with the collector on)
        pytest.skip("needs the collector on")
    gc.collect()  # no young object left that could set off a collection of its own
    cycle = weakref.ref(_Cycle())  # cyclic garbage made before the records
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        records = records_of(block)
        after = [[] for _ in range(50)]  # what would set off a collection of the new records
    finally:
        gc.callbacks.remove(seen)
    assert cycle() is None  # the young garbage of others found before the build, as usual
    # one collection of the young generations, before: 1600 new tracked objects, yet none of
    # them counts as young afterwards, so no collection traverses them
    assert len(records) == 400 and len(after) == 50 and collections == [1]


def test_building_records_leaves_objects_frozen_by_others_frozen() -> None:
    rng = np.random.default_rng(3)
    block = _block(rng, 0, 5, np.ones(n_values(3), dtype=bool))
    if gc.get_freeze_count():  # pragma: no cover
        pytest.skip("something in this process already froze objects")
    sentinel: list[Any] = [object()]  # a container: tracked by the collector
    gc.freeze()
    try:
        assert not any(o is sentinel for o in gc.get_objects())  # frozen: in no generation
        assert len(records_of(block)) == 5
        # still frozen (the count itself may drop: frozen objects freed meanwhile leave it)
        assert gc.get_freeze_count() > 0
        assert not any(o is sentinel for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is sentinel for o in gc.get_objects())


class _BlockSink:
    def __init__(self) -> None:
        self.blocks: list[StepBlock] = []

    def write_block(self, block: StepBlock) -> None:
        self.blocks.append(block)

    def write_steps(self, records: list[Any]) -> None:  # pragma: no cover
        raise AssertionError("a block sink gets blocks")

    def write_epoch(self, record: Any) -> None:  # pragma: no cover
        pass

    def should_stop(self) -> None:
        return None


@pytest.mark.parametrize("block_sink", [True, False])
def test_rows_are_handed_over_on_time_only_for_block_sinks(
        block_sink: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_recording, "BLOCK_SECONDS", 0.0)  # every step is late
    nv = n_values(1)
    sink = _BlockSink()
    rec = StackRecorder(2, 1, np.ones(nv, dtype=bool), [sink if block_sink else None, None],
                        keep_records=True, max_records=None)
    members = np.arange(2)
    for step in range(5):
        rec.begin(step, 0)
        rec.write(members, np.full((2, nv), float(step)), np.zeros(2, dtype=bool))
        rec.emit(members)
    # with a block sink, each step's rows went out at the next step; without, none yet
    assert len(sink.blocks) == (4 if block_sink else 0)
    assert [len(h.blocks) for h in rec.histories] == ([4, 4] if block_sink else [0, 0])
    for k in range(2):
        steps = rec.result_steps(k)()
        assert [r.step for r in steps] == list(range(5))
        assert [r.loss for r in steps] == [float(s) for s in range(5)]


def _fields_and_types(r: StepRecord) -> list[Any]:
    """Every field of ``r`` and of its layers, with its type (NaN as a string: equal)."""
    def pair(v: Any) -> tuple[str, type]:
        return repr(v), type(v)
    out = [pair(getattr(r, f.name)) for f in fields(r) if f.name != "layers"]
    for ly in r.layers:
        out += [pair(getattr(ly, f.name)) for f in fields(ly)]
    return out


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_records_equal_those_the_constructors_give_field_by_field(n_layers: int) -> None:
    # the records are filled slot by slot, not through __init__: every field is set, to the
    # value and the Python type (int, float, bool, None) the constructor path gives
    rng = np.random.default_rng(2)
    present = np.ones(n_values(n_layers), dtype=bool)
    present[4 + 6::8] = False  # dead_fraction absent in every layer
    if n_layers:
        present[4 + 8 * (n_layers - 1) + 4:] = False  # the last layer has no activation stats
    values = rng.normal(size=(7, len(present)))
    values[0, 4:] = np.inf
    values[1, 0] = np.nan
    values[:, ~present] = np.nan
    block = StepBlock(n_layers, np.arange(100, 107), np.arange(7) // 3,
                      np.arange(7) % 2 == 0, values, np.broadcast_to(present, values.shape))
    want = block.records()  # record_from_values: StepRecord(...) and LayerRecord(...)
    got = records_of(block)
    assert [_fields_and_types(r) for r in got] == [_fields_and_types(r) for r in want]
    assert [len(r.layers) for r in got] == [n_layers] * 7
    assert all(type(r) is StepRecord and type(r.layers) is list for r in got)
    assert all(type(ly) is LayerRecord for r in got for ly in r.layers)
    # selected rows of a block shared by the members (record_every > 1)
    assert repr(records_of_parts(n_layers, [part_of(block, [1, 4])])) == repr(
        [want[1], want[4]])
