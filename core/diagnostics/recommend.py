"""Recommendations: ranked fixes, each with its rationale and an RFC 7396 merge patch.

Every value in a patch is computed from the run (or, for preflight, from the spec's predicted
scales): the clipping threshold from the pre-explosion norm distribution, the learning rate
from how far the update-to-weight ratio (or, for plain SGD, the observed divergence rate) is
off, the initialisation from the activation's gain. A patch is built by editing the job's
validated spec and diffing (:func:`core.diagnostics.patch.create_merge_patch`); it is kept
only if applying it and re-validating gives exactly the edited spec.

The patch machinery lives in :mod:`core.diagnostics.fix_patch` and the spike fixes (Adam's
epsilon and beta2, a decaying rate, a warmup) in :mod:`core.diagnostics.spike_fixes`; this
module holds the other fixes and re-exports them all.
"""

from __future__ import annotations

import math
from typing import Any

from core.diagnostics.analytic import init_profile, matched_init
from core.diagnostics.fix_patch import recommendation, round_significant, spec_patch
from core.diagnostics.patch import apply_merge_patch
from core.diagnostics.report import Recommendation
from core.diagnostics.spike_fixes import (
    adam_beta2,
    adam_epsilon,
    clip_above_normal,
    decay_learning_rate,
    warmup,
)
from core.spec import SGD, GlobalNormClipping, TrainingSpec

__all__ = [
    "adam_beta2",
    "adam_epsilon",
    "batch_norm",
    "change_activation",
    "change_init",
    "clip_above_normal",
    "clip_gradients",
    "decay_learning_rate",
    "lower_learning_rate",
    "raise_learning_rate",
    "reset_bias",
    "spec_patch",
    "standardize_data",
    "undo_lr_increase",
    "warmup",
    "weight_decay",
]

# Target update-to-weight ratio for the learning-rate fix: 1e-2 is the upper end of the
# healthy range (1e-3 is typical); aiming at the edge keeps training as fast as is safe.
TARGET_UPDATE_RATIO = 1e-2
MAX_LR_CUT = 1e-3  # never cut the learning rate by more than 1000x in one recommendation
SAFETY = 0.5  # stay at half the estimated stability limit


# ------------------------------------------------------------------------------ actions
def clip_gradients(spec: TrainingSpec, typical_norm: float, n_updates: int,
                   peak: float | None = None) -> Recommendation | None:
    """Global-norm clipping at the typical pre-explosion norm (Pascanu et al. 2013)."""
    if not (typical_norm > 0 and math.isfinite(typical_norm)):
        return None
    max_norm = round_significant(typical_norm)
    current = spec.clipping
    if isinstance(current, GlobalNormClipping) and current.max_norm <= max_norm:
        return None  # already clipping at or below the typical norm: clipping is not the fix

    def edit(d: dict[str, Any]) -> None:
        d["clipping"] = {"mode": "global_norm", "max_norm": max_norm}

    peak_txt = f", while the peak reached {peak:.3g}" if peak is not None and math.isfinite(peak) else ""
    return recommendation(
        "clip_gradients",
        f"The median pre-clip gradient norm over {n_updates} healthy updates was "
        f"{typical_norm:.3g}{peak_txt}. Clipping the global norm at that typical value "
        "(Pascanu et al. 2013) leaves normal steps untouched and caps the runaway ones, so "
        "one large gradient can no longer throw the weights into a steeper region.",
        spec_patch(spec, edit),
        f"Steps are capped at lr x {max_norm:g}; growth can no longer feed on itself.",
    )


def lower_learning_rate(spec: TrainingSpec, update_ratio: float | None,
                        growth_per_step: float | None) -> Recommendation | None:
    """A learning rate scaled by how far the update ratio (or divergence rate) is off."""
    lr = spec.optimizer.lr
    factors: list[tuple[float, str]] = []
    if update_ratio is not None and update_ratio > TARGET_UPDATE_RATIO:
        factors.append((TARGET_UPDATE_RATIO / update_ratio,
                        f"the update-to-weight ratio was {update_ratio:.2g} (healthy: 1e-3 to "
                        f"{TARGET_UPDATE_RATIO:g})"))
    plain_sgd = isinstance(spec.optimizer, SGD) and spec.optimizer.momentum == 0
    if plain_sgd and growth_per_step is not None and growth_per_step > 1:
        # gradient descent on curvature lam multiplies the error by |1 - lr lam| per step:
        # growth rho means lam = (1 + rho) / lr, and stability needs lr < 2 / lam.
        limit = 2.0 / (1.0 + growth_per_step)
        factors.append((SAFETY * limit,
                        f"the gradient grew x{growth_per_step:.3g} per step, which for gradient "
                        f"descent means the stable learning rate is {limit:.2g}x the current one"))
    if not factors:
        return None
    factor, why = min(factors)
    factor = max(MAX_LR_CUT, min(0.5, factor))
    new_lr = round_significant(lr * factor)

    def edit(d: dict[str, Any]) -> None:
        d["optimizer"]["lr"] = new_lr

    return recommendation(
        "lower_learning_rate",
        f"Lower the learning rate from {lr:g} to {new_lr:g} (x{factor:.2g}): {why}.",
        spec_patch(spec, edit),
        "Each step moves the weights by a small fraction of their size again.",
    )


def undo_lr_increase(spec: TrainingSpec, stable_lr: float, onset_lr: float,
                     onset_step: int) -> Recommendation | None:
    """Keep the learning rate at the last value the run was stable with."""
    sched = spec.schedule
    growing = getattr(sched, "gamma", 1.0) > 1.0 and sched.name in ("step", "exponential")
    if growing:
        new_lr = round_significant(stable_lr)

        def edit(d: dict[str, Any]) -> None:
            d["schedule"] = {"name": "constant"}
            d["optimizer"]["lr"] = new_lr

        how = (f"replace the {sched.name} schedule (gamma {getattr(sched, 'gamma', 1.0):g} "
               f"raises the rate without bound) by a constant {new_lr:g}")
    else:
        factor = SAFETY * stable_lr / onset_lr
        new_lr = round_significant(spec.optimizer.lr * factor)

        def edit(d: dict[str, Any]) -> None:
            d["optimizer"]["lr"] = new_lr

        how = (f"scale the base learning rate by {factor:.2g} to {new_lr:g}, so the schedule "
               f"peaks at half the last stable rate")
    return recommendation(
        "lower_learning_rate",
        f"The schedule raises the learning rate from {stable_lr:.3g} to {onset_lr:.3g} by "
        f"step {onset_step}, past what the run is stable with: {how}.",
        spec_patch(spec, edit),
        "The run stays at a learning rate it was stable with.",
    )


def raise_learning_rate(spec: TrainingSpec, update_ratio: float) -> Recommendation | None:
    """A larger learning rate when every update is negligible next to the weights."""
    lr = spec.optimizer.lr
    factor = min(100.0, 1e-3 / max(update_ratio, 1e-12))
    if factor < 3:
        return None
    new_lr = round_significant(lr * factor)

    def edit(d: dict[str, Any]) -> None:
        d["optimizer"]["lr"] = new_lr

    return recommendation(
        "raise_learning_rate",
        f"Updates change the weights by only {update_ratio:.2g} of their norm per step "
        f"(healthy: ~1e-3): raise the learning rate from {lr:g} to {new_lr:g}.",
        spec_patch(spec, edit),
    )


def change_init(spec: TrainingSpec, input_rms: float, *, reset_bias: bool = False) -> Recommendation | None:
    """The initialisation matched to each layer's activation (He / Xavier / LeCun)."""
    acts = [h.activation for h in spec.model.hidden]
    schemes = {matched_init(a) for a in acts} or {"he_normal"}
    bias = 0.0 if reset_bias else spec.model.init.bias

    def edit(d: dict[str, Any]) -> None:
        if len(schemes) == 1:
            d["model"]["init"] = {"scheme": next(iter(schemes)), "bias": bias}
            for h in d["model"]["hidden"]:
                h["init"] = None
        else:
            d["model"]["init"] = {"scheme": "xavier_normal", "bias": bias}
            for h in d["model"]["hidden"]:
                h["init"] = {"scheme": matched_init(h["activation"]), "bias": bias}

    patch = spec_patch(spec, edit)
    if patch is None:
        return None
    before = init_profile(spec, input_rms)
    after = init_profile(TrainingSpec.model_validate(apply_merge_patch(spec.model_dump(mode="json"), patch)), input_rms)
    gain_b = _depth_gain(before)
    gain_a = _depth_gain(after)
    names = ", ".join(sorted(schemes))
    return recommendation(
        "change_init",
        f"Initialise with {names}, matched to the activation's gain and fan-in. The predicted "
        f"gradient gain through the depth at init goes from {gain_b:.3g}x to {gain_a:.3g}x "
        f"(per layer {_per_layer(before):.3g} -> {_per_layer(after):.3g}).",
        patch,
        "Signal and gradient keep their scale from layer to layer at step 0.",
    )


def _depth_gain(profile: list[Any]) -> float:
    """Product of the hidden-to-hidden backward gains (as in the preflight report)."""
    g = 1.0
    for layer in profile[1:-1]:
        g *= layer.backward_gain if math.isfinite(layer.backward_gain) else 0.0
    return g


def _per_layer(profile: list[Any]) -> float:
    if len(profile) < 3:
        return 1.0
    return _depth_gain(profile) ** (1.0 / (len(profile) - 2))


def batch_norm(spec: TrainingSpec) -> Recommendation | None:
    """Batch normalisation on every hidden layer."""
    if not spec.model.hidden or all(h.batch_norm for h in spec.model.hidden):
        return None

    def edit(d: dict[str, Any]) -> None:
        for h in d["model"]["hidden"]:
            h["batch_norm"] = True

    return recommendation(
        "batch_norm",
        "Batch-normalise every hidden layer: each layer's pre-activations are rescaled to "
        "unit variance on every batch, so a scale problem cannot compound through the depth "
        "(Ioffe & Szegedy 2015).",
        spec_patch(spec, edit),
    )


def change_activation(spec: TrainingSpec, to: str, why: str, *,
                      reset_bias: bool = False) -> Recommendation | None:
    """A non-saturating activation (with its matched initialisation)."""
    if all(h.activation == to for h in spec.model.hidden):
        return None
    scheme = matched_init(to)
    bias = 0.0 if reset_bias else spec.model.init.bias

    def edit(d: dict[str, Any]) -> None:
        for h in d["model"]["hidden"]:
            h["activation"] = to
            h["init"] = None
        d["model"]["init"] = {"scheme": scheme, "bias": bias}

    return recommendation(
        "change_activation",
        f"Use {to} with {scheme} initialisation: {why}",
        spec_patch(spec, edit),
    )


def reset_bias(spec: TrainingSpec) -> Recommendation | None:
    """Zero initial biases (and a leaky ReLU so units that die can come back)."""
    has_relu = any(h.activation == "relu" for h in spec.model.hidden)

    def edit(d: dict[str, Any]) -> None:
        d["model"]["init"]["bias"] = 0.0
        for h in d["model"]["hidden"]:
            if h.get("init"):
                h["init"]["bias"] = 0.0
            if h["activation"] == "relu":
                h["activation"] = "leaky_relu"

    bias = spec.model.init.bias
    return recommendation(
        "reset_bias",
        f"Start the biases at 0 instead of {bias:g}" + (
            " and use leaky_relu (slope 0.01): a unit pushed below zero for every input "
            "still passes a gradient and can recover." if has_relu else "."),
        spec_patch(spec, edit),
    )


def standardize_data(spec: TrainingSpec, x_rms: float, y_rms: float | None) -> Recommendation | None:
    """Standardise inputs (and regression targets) with training-split statistics."""
    if getattr(spec.data, "standardize", True):
        return None

    def edit(d: dict[str, Any]) -> None:
        d["data"]["standardize"] = True

    what = f"inputs (RMS {x_rms:.3g})"
    if y_rms is not None:
        what += f" and targets (RMS {y_rms:.3g})"
    return recommendation(
        "standardize_data",
        f"Standardise the {what} to zero mean and unit variance: gradients scale with the "
        "inputs and with the prediction error, so unit-scale data put every layer's gradient "
        "back in the range the learning rate and initialisation assume.",
        spec_patch(spec, edit),
        "Losses and gradients of order 1 from the first step.",
    )


def weight_decay(spec: TrainingSpec, weight_growth_per_step: float) -> Recommendation | None:
    """L2 weight decay that offsets the observed relative weight growth per step."""
    lr = spec.optimizer.lr
    wd = round_significant(max(1e-5, min(1e-1, weight_growth_per_step / lr)))
    if spec.optimizer.weight_decay >= wd:
        return None

    def edit(d: dict[str, Any]) -> None:
        d["optimizer"]["weight_decay"] = wd

    return recommendation(
        "weight_decay",
        f"The weights grew {weight_growth_per_step:.2g} of their norm per step; weight decay "
        f"{wd:g} shrinks them by lr x {wd:g} per step, offsetting that drift.",
        spec_patch(spec, edit),
    )
