"""A large stack is updated in row groups (core.optimizer_base.row_groups), bit for bit.

The grouped path is taken only above ``GROUP_BYTES`` per buffer; these tests lower that
constant so that small stacks take it, and compare every member with its own single
optimizer (and, through ``BatchedTrainer``, with its own single run) exactly: same bits.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from core import Trainer, TrainingSpec, optimizer_base
from core.batched import BatchedTrainer
from core.optimizer_base import row_groups
from core.optimizers import Optimizer, make_optimizer
from core.spec import OptimizerSpec

_OPTIMIZER = TypeAdapter(OptimizerSpec)

OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "sgd"},
    {"name": "sgd", "momentum": 0.9},
    {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"name": "adam", "weight_decay": 0.001},
    {"name": "adamw"},
    {"name": "rmsprop"},
    {"name": "rmsprop", "momentum": 0.5, "centered": True, "weight_decay": 0.01},
    {"name": "adagrad", "lr_decay": 0.01, "initial_accumulator_value": 0.1},
]
IDS = ["sgd", "sgd_momentum", "sgd_nesterov_wd", "adam_l2", "adamw", "rmsprop",
       "rmsprop_centered_momentum", "adagrad"]


def make(options: dict[str, Any], params: np.ndarray) -> Optimizer:
    return make_optimizer(_OPTIMIZER.validate_python({"lr": 0.01, **options}), params)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_row_groups_split_only_a_stack_larger_than_one_group() -> None:
    stack = np.zeros((10, 1000), dtype=np.float32)  # 4,000 bytes a row
    assert row_groups(stack, 12_000) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)]
    assert row_groups(stack, 1_000) == [slice(r, r + 1) for r in range(10)]  # at least a row
    assert row_groups(stack, 40_000) == [slice(None)]
    assert row_groups(stack, 39_999) == [slice(0, 9), slice(9, 18)]
    assert row_groups(np.zeros(10**6), 1_000) == [slice(None)]  # one network: never split


class HandedOver:
    """What step_groups hands over: the groups in order and their changes (copied while
    valid); each group's params are the stack's live rows, already updated."""

    def __init__(self, params: np.ndarray) -> None:
        self.params = params
        self.rows: list[slice] = []
        self.deltas = np.full_like(params, 7.0)

    def __call__(self, rows: slice, params: np.ndarray, delta: np.ndarray) -> None:
        assert np.shares_memory(params, self.params) and same_bits(params, self.params[rows])
        self.rows.append(rows)
        self.deltas[rows] = delta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIMIZERS, ids=IDS)
def test_a_grouped_stack_steps_each_member_as_its_own_optimizer(
        options: dict[str, Any], dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    K, n = 7, 53
    rng = np.random.default_rng(3)
    stack = rng.standard_normal((K, n)).astype(dtype)
    monkeypatch.setattr(optimizer_base, "GROUP_BYTES", 2 * stack[0].nbytes)
    assert len(row_groups(stack)) == 4  # rows 0-1, 2-3, 4-5, 6: the grouped path
    singles = [make(options, stack[k].copy()) for k in range(K)]
    batched = make(options, stack)
    lrs = np.geomspace(1e-3, 0.3, K)[:, None]  # float64 column, as BatchedTrainer passes
    members = list(range(K))
    for step in range(6):
        grads = rng.standard_normal((len(members), n)).astype(dtype)
        grads[0, 5] = np.nan if step == 2 else grads[0, 5]  # NaN propagates as data
        if step % 2:  # step_groups hands each group's change over; step keeps them all
            handed = HandedOver(batched.params)
            batched.step_groups(grads.copy(), lrs, handed)
            assert handed.rows == row_groups(batched.params) and len(handed.rows) >= 2
            deltas = handed.deltas
        else:
            deltas = batched.step(grads.copy(), lrs).copy()
        for r, k in enumerate(members):
            single_delta = singles[k].step(grads[r].copy(), float(lrs[r, 0]))
            assert same_bits(batched.params[r], singles[k].params), (step, k)
            assert same_bits(deltas[r], single_delta), (step, k)
        if step == 2:  # members 1 and 4 leave: the others' rows move up, state with them
            keep = np.array([0, 2, 3, 5, 6])
            batched.keep_rows(keep)
            members = [members[i] for i in keep.tolist()]
            lrs = lrs[keep]


@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry", "no_telemetry"])
@pytest.mark.parametrize("options", OPTIMIZERS, ids=IDS)
def test_a_grouped_stack_trains_each_member_as_its_own_run(
        options: dict[str, Any], telemetry: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    base: dict[str, Any] = {
        "seed": 0, "dtype": "float32",
        "data": {"source": "synthetic", "name": "spirals", "n_samples": 120},
        "model": {"hidden": [{"units": 16}, {"units": 16}]},
        "optimizer": {**options, "lr": 0.05},
        "training": {"epochs": 2, "batch_size": 16},
    }
    specs = []
    for lr in (0.003, 0.05, 3.0):  # 3.0 explodes for some: a member leaves mid-run
        for seed in (0, 1):
            spec = copy.deepcopy(base)
            spec["optimizer"]["lr"] = lr
            spec["seed"] = seed
            specs.append(TrainingSpec.model_validate(spec))
    trainer = BatchedTrainer(specs, telemetry=telemetry)
    monkeypatch.setattr(optimizer_base, "GROUP_BYTES", 2 * trainer.network.flat[0].nbytes)
    assert len(row_groups(trainer.network.flat)) == 3
    for spec, res in zip(specs, trainer.run(), strict=True):
        single = Trainer(spec, telemetry=telemetry).run()
        assert (res.stop_reason, res.steps_completed) == (single.stop_reason,
                                                          single.steps_completed)
        assert single.steps  # something to compare
        got = [dataclasses.asdict(r) for r in res.steps]
        want = [dataclasses.asdict(r) for r in single.steps]
        # every recorded number the same bits (NaN where the single run has NaN)
        assert repr(got) == repr(want)
        assert repr(res.epochs) == repr(single.epochs)
