"""What a training run returns: its step and epoch records and why it stopped.

:class:`TrainingResult` is what :meth:`core.trainer.Trainer.run` (and, per member,
:meth:`core.batched.BatchedTrainer.run`) hands back and what :func:`core.diagnose` reads. A
stacked run may leave ``steps`` to be built on first access (:meth:`TrainingResult.defer_steps`),
so a member whose records nobody reads never turns its rows into objects.
:mod:`core.trainer` re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.spec import TrainingSpec
from core.telemetry import EpochRecord, NonFiniteEvent, StepRecord, StopReason

__all__ = ["TrainingResult"]


@dataclass
class TrainingResult:
    """What :meth:`Trainer.run` returns.

    ``steps`` holds the emitted step records (every step with ``record_every=1``; with thinning,
    still the first, the last and every step with a non-finite value).
    """

    spec: TrainingSpec
    steps: list[StepRecord]
    epochs: list[EpochRecord]
    stop_reason: StopReason
    steps_completed: int
    total_steps: int
    first_non_finite: NonFiniteEvent | None
    alerts: list[Any] = field(default_factory=list)
    runtime_seconds: float = 0.0

    @property
    def final_loss(self) -> float | None:
        return self.steps[-1].loss if self.steps else None

    def defer_steps(self, build: Callable[[], list[StepRecord]]) -> None:
        """Let ``steps`` be built by ``build()`` on first access (a stacked run keeps each
        member's rows as arrays until something reads its records; many callers never do)."""
        self.__dict__["_build_steps"] = build

    def __getstate__(self) -> dict[str, Any]:
        self.steps  # noqa: B018 (built before pickling: the builder holds the run's arrays)
        return dict(self.__dict__)


class _Steps:
    """``TrainingResult.steps``: a plain list (what was set), or built once by the builder
    :meth:`TrainingResult.defer_steps` left, on first access."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        build = d.pop("_build_steps", None)
        if build is not None:
            d["steps"] = build()
        return d["steps"]

    def __set__(self, obj: Any, value: list[StepRecord]) -> None:
        obj.__dict__.pop("_build_steps", None)
        obj.__dict__["steps"] = value


TrainingResult.steps = _Steps()  # type: ignore[assignment]
