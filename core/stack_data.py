"""The data of a stack's members: one data set per data key, and the batch each step takes.

Members whose specs load the same data (:func:`data_key`: the same data spec, seed, dtype,
training size and loss) share one :class:`MemberData`, loaded once; every member's generator
then continues from the state loading left, as a single trainer's does
(:func:`load_member_data`). A step's batch is shared
by the whole stack while every active member reads the same data in the same order
(:func:`shared_batches`), and stacked per member otherwise (:func:`step_batch`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from core.data import Dataset, load_dataset
from core.diagnostics.preflight import memory_breakdown
from core.losses import loss_targets
from core.member import MemberRun
from core.spec import TrainingSpec
from core.stack_recording import kept_row_bytes

__all__ = ["MemberData", "data_key", "load_member_data", "members_that_fit", "shared_batches",
           "step_batch"]

Array = np.ndarray


def data_key(spec: TrainingSpec) -> str:
    """What determines a member's data set (and its generator's state after loading it)."""
    return json.dumps([spec.data.model_dump(mode="json"), spec.seed, spec.dtype,
                       spec.n_train_samples(), spec.loss], sort_keys=True)


def members_that_fit(specs: Sequence[TrainingSpec], limit: int,
                     max_records: int | None = None) -> int:
    """How many of ``specs`` (members of one stack, in order), from the first, fit together
    in ``limit`` bytes: each member's own arrays by preflight's estimate, each data set once
    per data key (:func:`data_key`), and each member's kept history (``max_records`` rows at
    most, as ``BatchedTrainer.run`` keeps them; :func:`core.stack_recording.kept_row_bytes`).
    At least 1: the first member alone is the job's own budget, checked when it was
    submitted."""
    fit, seen, used = 0, set(), 0
    for spec in specs:
        mem = memory_breakdown(spec)
        key = data_key(spec)
        used += sum(mem.values()) - (mem["data"] if key in seen else 0)
        seen.add(key)
        kept = spec.total_steps() if max_records is None else min(spec.total_steps(),
                                                                   max_records)
        used += kept * kept_row_bytes(len(spec.layer_sizes()) - 1)
        if used > limit:
            break
        fit += 1
    return max(fit, 1)


class MemberData:
    """One data set shared by the members loaded from the same data key."""

    def __init__(self, spec: TrainingSpec, rng: np.random.Generator, out_units: int) -> None:
        self.dataset: Dataset = load_dataset(spec, rng)
        self.rng_state = rng.bit_generator.state
        loss = spec.loss or "mse"
        self.y_train = loss_targets(self.dataset.y_train, loss, self.dataset.task, out_units,
                                   np.dtype(spec.dtype))
        self.y_val = loss_targets(self.dataset.y_val, loss, self.dataset.task, out_units,
                                 np.dtype(spec.dtype))


def load_member_data(specs: list[TrainingSpec], out_units: int
                     ) -> tuple[list[MemberData], list[int], list[np.random.Generator]]:
    """The data sets (one per data key), each member's index into them and each member's
    generator: seeded from its spec, then past its data's loading (the state loading left
    when another member loaded it), ready to draw the member's initial parameters."""
    data: list[MemberData] = []
    by_key: dict[str, int] = {}
    data_index: list[int] = []
    rngs: list[np.random.Generator] = []
    for spec in specs:
        rng = np.random.default_rng(spec.seed)
        key = data_key(spec)
        if key not in by_key:
            by_key[key] = len(data)
            data.append(MemberData(spec, rng, out_units))
        else:
            rng.bit_generator.state = data[by_key[key]].rng_state
        data_index.append(by_key[key])
        rngs.append(rng)
    return data, data_index, rngs


def shared_batches(active: list[MemberRun]) -> bool:
    """Whether all active members see the same batches (same data, same order)."""
    first = active[0]
    order = first.order
    for m in active[1:]:
        if m.data_index != first.data_index:
            return False
        if (m.order is None) != (order is None):
            return False
        if m.order is not None and order is not None and m.order is not order and not (
                m.order.shape == order.shape and (m.order == order).all()):
            return False
    return True


def step_batch(active: list[MemberRun], data: list[MemberData], shared: bool, start: int,
               batch_size: int) -> tuple[Array, Array]:
    """The step's inputs and targets: shared ``(m, ...)`` or per member ``(K, m, ...)``."""
    if shared:
        return _member_batch(active[0], data, start, batch_size)
    pairs = [_member_batch(m, data, start, batch_size) for m in active]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _member_batch(m: MemberRun, data: list[MemberData], start: int,
                  batch_size: int) -> tuple[Array, Array]:
    d = data[m.data_index]
    X, y = d.dataset.X_train, d.y_train
    if m.order is None:
        return X[start:start + batch_size], y[start:start + batch_size]
    idx = m.order[start:start + batch_size]
    return np.take(X, idx, axis=0), np.take(y, idx, axis=0)
