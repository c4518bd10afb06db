"""The fixes for loss spikes, by mechanism: Adam's second moment (a larger epsilon, a faster
beta2), the edge of stability (a decaying learning rate) and the early catapult (a warmup);
and for a healthy run whose gradient spiked, clipping above its normal range.

Each builds its patch with :func:`core.diagnostics.fix_patch.spec_patch` and returns None when
the spec already has the fix. Re-exported by :mod:`core.diagnostics.recommend`.
"""

from __future__ import annotations

import math
from typing import Any

from core.diagnostics.fix_patch import recommendation, round_significant, spec_patch
from core.diagnostics.report import Recommendation
from core.spec import GlobalNormClipping, TrainingSpec

__all__ = [
    "adam_beta2",
    "adam_epsilon",
    "clip_above_normal",
    "decay_learning_rate",
    "warmup",
]

_ADAPTIVE = ("adam", "adamw", "rmsprop")


def clip_above_normal(spec: TrainingSpec, ceiling: float, typical_norm: float,
                      n_updates: int) -> Recommendation | None:
    """Global-norm clipping at the top of the gradient norm's normal range over the run
    (``ceiling``: the largest norm of its healthy updates): optional hardening for a healthy
    run whose gradient spiked. Not at the typical (median) norm, as for a run the spikes
    harmed: a converged run's norm ends orders of magnitude below where it started, and
    clipping at its median would throttle every step of the early training."""
    if not (ceiling > 0 and math.isfinite(ceiling)):
        return None
    max_norm = round_significant(ceiling)
    current = spec.clipping
    if isinstance(current, GlobalNormClipping) and current.max_norm <= max_norm:
        return None  # already clipping within the normal range

    def edit(d: dict[str, Any]) -> None:
        d["clipping"] = {"mode": "global_norm", "max_norm": max_norm}

    return recommendation(
        "clip_gradients",
        f"Over {n_updates} healthy updates the pre-clip gradient norm stayed at or below "
        f"{ceiling:.3g} (median {typical_norm:.3g}). Clipping the global norm there leaves "
        "the normal steps of the whole run untouched and caps the spikes above it: optional "
        "hardening, since the spikes did not harm this run.",
        spec_patch(spec, edit),
        f"Steps are capped at lr x {max_norm:g}; a spike can no longer throw the weights far.",
    )


def adam_epsilon(spec: TrainingSpec, grad_norm_before: float) -> Recommendation | None:
    """An epsilon at the per-parameter gradient size of the converged run (Adam spikes)."""
    opt = spec.optimizer
    old = getattr(opt, "eps", None)
    if opt.name not in _ADAPTIVE or not isinstance(old, float) or not (grad_norm_before > 0):
        return None
    per_param = grad_norm_before / math.sqrt(max(spec.parameter_count(), 1))
    eps = round_significant(max(per_param, 10.0 * old))
    if eps <= old:
        return None

    def edit(d: dict[str, Any]) -> None:
        d["optimizer"]["eps"] = eps

    return recommendation(
        "adam_epsilon",
        f"Before the spike the gradient norm was {grad_norm_before:.3g}, about {per_param:.2g} "
        f"per parameter: the second-moment estimate decayed toward that scale, so "
        f"lr / (sqrt(v) + eps) grew until a step overshot (Adam's loss spikes, Bai et al. "
        f"2026). Raising eps from {old:g} to {eps:g} bounds the effective step once the "
        "gradients are that small.",
        spec_patch(spec, edit),
        "Updates shrink with the gradient once the run has converged; no late spikes.",
    )


def adam_beta2(spec: TrainingSpec) -> Recommendation | None:
    """A faster second-moment average (beta2 0.99): v follows a returning gradient sooner."""
    opt = spec.optimizer
    beta2 = getattr(opt, "beta2", None) if opt.name in ("adam", "adamw") else None
    if beta2 is None or beta2 <= 0.99:
        return None

    def edit(d: dict[str, Any]) -> None:
        d["optimizer"]["beta2"] = 0.99

    return recommendation(
        "adam_beta2",
        f"Lower beta2 from {beta2:g} to 0.99: the second-moment average then forgets in ~100 "
        "steps instead of ~1000, so when the gradient grows again the denominator catches up "
        "before the step size does damage.",
        spec_patch(spec, edit),
    )


def decay_learning_rate(spec: TrainingSpec, why: str) -> Recommendation | None:
    """A cosine decay of the learning rate over the run (from a constant rate)."""
    if spec.schedule.name != "constant":
        return None

    def edit(d: dict[str, Any]) -> None:
        d["schedule"] = {"name": "cosine"}

    return recommendation(
        "decay_learning_rate",
        f"Decay the learning rate along a cosine over the run: {why}",
        spec_patch(spec, edit),
        "The step size falls below the stability limit as training settles.",
    )


def warmup(spec: TrainingSpec, steps: int) -> Recommendation | None:
    """A linear warmup over the first ``steps`` steps (from a constant rate)."""
    if spec.schedule.name != "constant":
        return None
    steps = max(10, steps)

    def edit(d: dict[str, Any]) -> None:
        d["schedule"] = {"name": "linear_warmup", "warmup_steps": steps, "start_factor": 0.1}

    return recommendation(
        "warmup",
        f"Warm the learning rate up linearly over the first {steps} steps (from a tenth): the "
        "loss jumped early because the first steps were past the stability limit of the "
        "initial curvature (the catapult phase); a warmup lets the curvature fall first.",
        spec_patch(spec, edit),
        "No early jump of the loss.",
    )
