"""Learning-rate schedules over optimizer steps (torch.optim.lr_scheduler, closed forms).

A schedule maps the 0-based optimizer step to the learning rate of that step: step 0 is the
first update, and ``lr_at(step)`` equals what a torch optimizer holds before its
``step``-th update when its scheduler is stepped once per optimizer step. Closed forms avoid
torch's recursive products, so values agree with torch to rounding. A growing schedule that
overflows gives ``inf`` (data, not an error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.spec import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearWarmupSchedule,
    ScheduleSpec,
    StepSchedule,
)

__all__ = [
    "Constant",
    "Cosine",
    "Exponential",
    "LinearWarmup",
    "Schedule",
    "StepDecay",
    "make_schedule",
]


def _power(gamma: float, n: int) -> float:
    """``gamma ** n``, ``inf`` instead of OverflowError."""
    try:
        return gamma**n
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of the optimizer step; ``schedule(step)`` = ``lr_at``."""

    base_lr: float

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based)."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.lr_at(step)


@dataclass(frozen=True)
class Constant(Schedule):
    """``lr = base_lr``."""

    def lr_at(self, step: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class StepDecay(Schedule):
    """torch ``StepLR``: ``lr = base_lr * gamma ** (step // step_size)``."""

    step_size: int
    gamma: float

    def lr_at(self, step: int) -> float:
        return self.base_lr * _power(self.gamma, step // self.step_size)


@dataclass(frozen=True)
class Exponential(Schedule):
    """torch ``ExponentialLR``: ``lr = base_lr * gamma ** step``."""

    gamma: float

    def lr_at(self, step: int) -> float:
        return self.base_lr * _power(self.gamma, step)


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """torch ``LinearLR(start_factor, end_factor=1, total_iters=warmup_steps)``.

    ``lr = base_lr * (start_factor + (1 - start_factor) * min(step, warmup_steps) / warmup_steps)``:
    ``start_factor * base_lr`` at step 0, ``base_lr`` from step ``warmup_steps`` on.
    """

    warmup_steps: int
    start_factor: float

    def lr_at(self, step: int) -> float:
        progress = min(step, self.warmup_steps) / self.warmup_steps
        return self.base_lr * (self.start_factor + (1.0 - self.start_factor) * progress)


@dataclass(frozen=True)
class Cosine(Schedule):
    """torch ``CosineAnnealingLR`` (closed form), after an optional linear warmup.

    With ``W = warmup_steps`` and ``t = step - W``::

        lr = base_lr * (step + 1) / (W + 1)                             step < W
        lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / t_max)) / 2   step >= W

    The warmup rises in equal increments and reaches ``base_lr`` at step ``W``, where the
    cosine starts: torch ``SequentialLR([LinearLR(start_factor=1/(W+1), total_iters=W),
    CosineAnnealingLR(t_max, eta_min)], milestones=[W])``. Past ``t_max`` the curve goes back
    up, as torch's does (no restarts).
    """

    t_max: int
    eta_min: float
    warmup_steps: int

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / (self.warmup_steps + 1)
        t = step - self.warmup_steps
        cosine = (1.0 + math.cos(math.pi * t / self.t_max)) / 2.0
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


def make_schedule(spec: ScheduleSpec, base_lr: float, total_steps: int) -> Schedule:
    """The schedule described by ``spec`` for a run of ``total_steps`` updates from ``base_lr``.

    ``total_steps`` only matters for ``cosine`` with ``t_max`` null: the cosine then spans the
    steps after the warmup, ``t_max = max(total_steps - warmup_steps, 1)``.
    """
    if isinstance(spec, ConstantSchedule):
        return Constant(base_lr)
    if isinstance(spec, StepSchedule):
        return StepDecay(base_lr, spec.step_size, spec.gamma)
    if isinstance(spec, ExponentialSchedule):
        return Exponential(base_lr, spec.gamma)
    if isinstance(spec, LinearWarmupSchedule):
        return LinearWarmup(base_lr, spec.warmup_steps, spec.start_factor)
    if isinstance(spec, CosineSchedule):
        t_max = spec.t_max if spec.t_max is not None else max(total_steps - spec.warmup_steps, 1)
        return Cosine(base_lr, t_max, spec.eta_min, spec.warmup_steps)
    raise ValueError(f"unknown schedule {getattr(spec, 'name', spec)!r}")
