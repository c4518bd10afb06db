"""core.member: a stacked run's per-member bookkeeping, as the single trainer's loop does it."""

from __future__ import annotations

import numpy as np

from core import TrainingSpec
from core.member import MemberRun
from core.recording import n_values
from core.schedules import Constant
from core.stack_recording import StackRecorder


def _members(seeds: list[int], shuffle: bool = True) -> list[MemberRun]:
    rec = StackRecorder(len(seeds), 0, np.ones(n_values(0), dtype=bool), [None] * len(seeds),
                        keep_records=True, max_records=None)
    out = []
    for k, seed in enumerate(seeds):
        spec = TrainingSpec.model_validate({
            "seed": seed, "data": {"source": "synthetic", "name": "moons", "n_samples": 100},
            "training": {"epochs": 2, "batch_size": 16, "shuffle": shuffle}})
        out.append(MemberRun(k, spec, None, np.random.default_rng(seed), Constant(0.1), 0, rec))
    return out


def test_epoch_orders_are_each_generators_own_draws_one_per_generator_state() -> None:
    seeds = [0, 1, 0, 0, 1, 2]
    members = _members(seeds)
    members[3].rng.random()  # seed 0 too, but a draw further on: a state of its own
    alone = [np.random.default_rng(s) for s in seeds]  # each drawing for itself
    alone[3].random()
    for epoch in range(3):
        MemberRun.start_epochs(members, 80)
        if epoch == 0:  # one draw per generator state: 0 and 2, 1 and 4 share their order
            assert members[0].order is members[2].order
            assert members[1].order is members[4].order
            assert len({id(m.order) for m in members}) == 4
        for m, rng in zip(members, alone, strict=True):
            assert m.order is not None
            assert np.array_equal(m.order, rng.permutation(80))
            assert m.rng.bit_generator.state == rng.bit_generator.state
            assert m.rng.random() == rng.random()  # and the draws after it


def test_without_shuffling_no_order_is_drawn() -> None:
    members = _members([0, 0])
    for m in members:
        m.spec.training.shuffle = False
    before = [m.rng.bit_generator.state for m in members]
    MemberRun.start_epochs(members, 80)
    assert [m.order for m in members] == [None, None]
    assert [m.rng.bit_generator.state for m in members] == before
