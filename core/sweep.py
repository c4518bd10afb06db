"""Sweeps: a base spec and axes (dotted paths with values) expanded into member specs.

An axis is a dotted path into the spec (``optimizer.lr``, ``model.init.std``,
``model.init.scheme``, ``clipping.max_norm``, ``seed``, ``model.hidden.0.units``; list items
by index) with either a list of ``values`` or a ``log_range`` + ``points`` (log-spaced,
ends included). ``model.depth`` is special: "repeat the first hidden layer n times". The
members are the grid of all axes' values (the first axis varies slowest); every member is a
complete :class:`~core.spec.TrainingSpec`, validated with the same limits as a job, and
:class:`SweepLimits` bounds the member count and the sweep's total optimizer steps before
anything is built. An object on an axis's path that the base spec leaves out starts, per
member, from the one the spec would use there (:mod:`core.sweep_paths`).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.spec import SpecLimits, TrainingSpec
from core.sweep_paths import SweepError, assign, resolve

__all__ = ["SweepAxis", "SweepError", "SweepLimits", "SweepMember", "expand_sweep", "set_path"]

AxisValue = float | int | str | bool


@dataclass(frozen=True)
class SweepLimits:
    """Bounds checked before a sweep's members are built."""

    max_members: int = 1024
    max_total_steps: int = 10_000_000
    max_axes: int = 4


class SweepAxis(BaseModel):
    """One axis of a sweep: a dotted spec path and its values."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = Field(min_length=1, max_length=200,
                      description="Dotted path into the spec, e.g. `optimizer.lr`, "
                                  "`model.init.std`, `seed`, `model.depth` (repeat the first "
                                  "hidden layer n times). An object the base spec leaves out "
                                  "starts from the spec's default (`optimizer.lr` without "
                                  "`optimizer`: the default SGD).",
                      examples=["optimizer.lr"])
    values: list[AxisValue] | None = Field(None, min_length=1, max_length=1024,
                                           description="The values, in order.")
    log_range: list[float] | None = Field(
        None, min_length=2, max_length=2,
        description="`[low, high]`, both > 0: `points` log-spaced values, ends included.",
        examples=[[1e-3, 1.0]])
    points: int | None = Field(None, ge=2, le=1024, strict=True,
                               description="Number of `log_range` values.")

    @model_validator(mode="after")
    def _one_kind(self) -> SweepAxis:
        if (self.values is None) == (self.log_range is None):
            raise ValueError("give either `values` or `log_range` with `points`")
        if self.log_range is not None:
            lo, hi = self.log_range
            if not (lo > 0 and hi > 0):
                raise ValueError("log_range bounds must be > 0")
            if self.points is None:
                raise ValueError("log_range needs `points`")
        elif self.points is not None:
            raise ValueError("`points` goes with `log_range`, not `values`")
        return self

    def grid(self) -> list[AxisValue]:
        """The axis values, in order."""
        if self.values is not None:
            return list(self.values)
        assert self.log_range is not None and self.points is not None
        lo, hi = (math.log(v) for v in self.log_range)
        n = self.points
        return [float(f"{math.exp(lo + (hi - lo) * i / (n - 1)):.6g}") for i in range(n)]

    def size(self) -> int:
        return len(self.values) if self.values is not None else int(self.points or 0)


@dataclass(frozen=True)
class SweepMember:
    """One grid point: its index, its axis values (path -> value) and its spec."""

    index: int
    values: dict[str, AxisValue]
    spec: TrainingSpec


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of the spec dict with ``path`` set to ``value`` (``model.depth``: the first
    hidden layer repeated ``value`` times). An object on the path that the spec leaves out
    starts from the one the spec would use by default (see :mod:`core.sweep_paths`)."""
    out = copy.deepcopy(spec)
    assign(out, path, value)
    resolve(out)
    return out


def expand_sweep(spec: dict[str, Any], axes: list[SweepAxis],
                 limits: SweepLimits | None = None,
                 spec_limits: SpecLimits | None = None) -> list[SweepMember]:
    """The members of the grid of ``axes`` over the base ``spec`` (a spec dict, as in a job
    body), validated; :class:`SweepError` names the axis, value or limit that is wrong."""
    limits = limits or SweepLimits()
    if not axes:
        raise SweepError("a sweep needs at least one axis", ("axes",))
    if len(axes) > limits.max_axes:
        raise SweepError(f"the number of axes is {len(axes)}; the limit max_axes is "
                         f"{limits.max_axes}", ("axes",), "max_axes")
    paths = [a.path for a in axes]
    for i, p in enumerate(paths):
        if p in paths[:i]:
            raise SweepError(f"axis path {p!r} appears twice", ("axes", i, "path"))
    count = math.prod(a.size() for a in axes)
    if count > limits.max_members:
        raise SweepError(f"the number of members (the product of the axis lengths) is {count}; "
                         f"the limit max_members is {limits.max_members}", ("axes",),
                         "max_members")
    grids = [a.grid() for a in axes]
    context = {"limits": spec_limits} if spec_limits is not None else None
    members: list[SweepMember] = []
    total_steps = 0
    for index, combo in enumerate(itertools.product(*grids)):
        body = copy.deepcopy(spec)
        for i, (a, value) in enumerate(zip(axes, combo, strict=True)):
            assign(body, a.path, value, axis=i)
        resolve(body)  # left-out objects, once all of this member's values are set
        try:
            member = TrainingSpec.model_validate(body, context=context)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise SweepError(
                f"member {dict(zip(paths, combo, strict=True))} is not a valid spec: {where}: "
                f"{err['msg']}", ("spec", *err["loc"])) from None
        total_steps += member.total_steps()
        if total_steps > limits.max_total_steps:
            raise SweepError(f"the members' optimizer steps add up to more than "
                             f"{limits.max_total_steps}; the limit max_total_steps is "
                             f"{limits.max_total_steps}", ("axes",), "max_total_steps")
        members.append(SweepMember(index, dict(zip(paths, combo, strict=True)), member))
    return members
