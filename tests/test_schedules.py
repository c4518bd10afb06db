"""Learning-rate schedules: hand values and step-by-step parity with torch.optim.lr_scheduler."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import TypeAdapter

from core.schedules import Schedule, make_schedule
from core.spec import ScheduleSpec

_SCHEDULE = TypeAdapter(ScheduleSpec)


def schedule(name: str, base_lr: float = 0.1, total_steps: int = 100, **kw: Any) -> Schedule:
    return make_schedule(_SCHEDULE.validate_python({"name": name, **kw}), base_lr, total_steps)


# --------------------------------------------------------------------------------------------
# hand values
# --------------------------------------------------------------------------------------------


def test_constant_is_the_base_lr_from_step_0() -> None:
    s = schedule("constant", 0.3)
    assert [s(0), s(1), s.lr_at(10_000)] == [0.3, 0.3, 0.3]


def test_step_decays_every_step_size_steps() -> None:
    s = schedule("step", 1.0, step_size=3, gamma=0.5)
    assert [s(t) for t in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_exponential_decays_every_step() -> None:
    s = schedule("exponential", 2.0, gamma=0.5)
    assert [s(t) for t in range(4)] == [2.0, 1.0, 0.5, 0.25]


def test_growing_exponential_overflows_to_inf_without_raising() -> None:
    s = schedule("exponential", 1.0, gamma=10.0)
    assert s(400) == math.inf
    assert schedule("step", 1.0, step_size=1, gamma=10.0)(400) == math.inf


def test_linear_warmup_rises_from_start_factor_to_base() -> None:
    s = schedule("linear_warmup", 1.0, warmup_steps=4, start_factor=0.2)
    assert [s(t) for t in range(7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])


def test_cosine_spans_all_steps_when_t_max_is_null() -> None:
    s = schedule("cosine", 1.0, total_steps=10, eta_min=0.1)
    assert s(0) == 1.0
    assert s(5) == pytest.approx(0.55)  # halfway: (base + eta_min) / 2
    assert s(9) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 9 / 10)) / 2)
    assert all(s(t) > s(t + 1) for t in range(9))


def test_cosine_warmup_rises_in_equal_increments_then_starts_the_cosine_at_base() -> None:
    s = schedule("cosine", 1.0, total_steps=14, warmup_steps=4)
    assert [s(t) for t in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert s(4 + 5) == pytest.approx(0.5)  # the cosine spans total - warmup = 10 steps


def test_cosine_with_explicit_t_max_goes_back_up_after_it_like_torch() -> None:
    s = schedule("cosine", 1.0, t_max=4)
    assert [s(t) for t in (0, 2, 4, 6, 8)] == pytest.approx([1.0, 0.5, 0.0, 0.5, 1.0])


def test_cosine_warmup_longer_than_the_run_still_works() -> None:
    s = schedule("cosine", 1.0, total_steps=3, warmup_steps=5)
    assert [s(t) for t in range(3)] == pytest.approx([1 / 6, 2 / 6, 3 / 6])


# --------------------------------------------------------------------------------------------
# torch.optim.lr_scheduler parity, scheduler stepped once per optimizer step
# --------------------------------------------------------------------------------------------


def torch_lrs(make_scheduler: Callable[[Any, Any], Any], base_lr: float, steps: int) -> list[float]:
    """The lr a torch optimizer uses for each of ``steps`` updates."""
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=base_lr)
    scheduler = make_scheduler(torch.optim.lr_scheduler, opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        param.grad = torch.zeros(1, dtype=torch.float64)
        opt.step()
        scheduler.step()
    return lrs


CASES: list[tuple[str, dict[str, Any], Callable[[Any, Any], Any]]] = [
    ("constant", {}, lambda lr, opt: lr.ConstantLR(opt, factor=1.0, total_iters=0)),
    ("step", {"step_size": 7, "gamma": 0.5}, lambda lr, opt: lr.StepLR(opt, 7, gamma=0.5)),
    ("step", {"step_size": 1, "gamma": 0.9}, lambda lr, opt: lr.StepLR(opt, 1, gamma=0.9)),
    ("exponential", {"gamma": 0.97}, lambda lr, opt: lr.ExponentialLR(opt, 0.97)),
    ("cosine", {}, lambda lr, opt: lr.CosineAnnealingLR(opt, T_max=60)),
    ("cosine", {"t_max": 13, "eta_min": 0.001},
     lambda lr, opt: lr.CosineAnnealingLR(opt, T_max=13, eta_min=0.001)),
    ("cosine", {"warmup_steps": 9, "eta_min": 0.002},
     lambda lr, opt: lr.SequentialLR(opt, [lr.LinearLR(opt, start_factor=1 / 10, total_iters=9),
                                           lr.CosineAnnealingLR(opt, T_max=51, eta_min=0.002)],
                                     milestones=[9])),
    ("linear_warmup", {"warmup_steps": 10, "start_factor": 0.05},
     lambda lr, opt: lr.LinearLR(opt, start_factor=0.05, total_iters=10)),
    ("linear_warmup", {"warmup_steps": 1, "start_factor": 1.0},
     lambda lr, opt: lr.LinearLR(opt, start_factor=1.0, total_iters=1)),
]


@pytest.mark.parametrize(("name", "options", "make_torch"), CASES,
                         ids=[f"{n}-{o}" for n, o, _ in CASES])
def test_matches_torch_scheduler_step_by_step(name: str, options: dict[str, Any],
                                              make_torch: Callable[[Any, Any], Any]) -> None:
    base_lr, total = 0.3, 60
    expected = torch_lrs(make_torch, base_lr, total)
    ours = schedule(name, base_lr, total, **options)
    assert [ours(t) for t in range(total)] == pytest.approx(expected, rel=1e-12, abs=1e-15)
