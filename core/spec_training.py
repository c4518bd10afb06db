"""How the spec trains: optimizers, learning-rate schedules, gradient clipping, epochs and
batches, what is monitored, and a job's own webhook."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from core.spec_base import _fail, _FloatsAcceptInts, _Strict

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "AdaptiveClipping",
    "ClippingSpec",
    "ConstantSchedule",
    "CosineSchedule",
    "ExponentialSchedule",
    "GlobalNormClipping",
    "LayerNormClipping",
    "LinearWarmupSchedule",
    "MonitorSpec",
    "NoClipping",
    "NotifyEvent",
    "NotifySpec",
    "OptimizerSpec",
    "RMSprop",
    "ScheduleSpec",
    "StepSchedule",
    "TrainingOptions",
    "ValueClipping",
]

_LR_DESC = "Learning rate (> 0)."


class SGD(_FloatsAcceptInts):
    """torch.optim.SGD: momentum with dampening 0, optional Nesterov, L2 weight decay."""

    name: Literal["sgd"]
    lr: float = Field(0.01, gt=0, description=_LR_DESC, examples=[0.01, 0.1])
    momentum: float = Field(0.0, ge=0, lt=1, description="Momentum factor.")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGD:
        if self.nesterov and self.momentum <= 0:
            raise _fail(("nesterov",), "nesterov=true requires momentum > 0")
        return self


class Adam(_FloatsAcceptInts):
    """torch.optim.Adam (Kingma & Ba 2015), L2 weight decay added to the gradient."""

    name: Literal["adam"]
    lr: float = Field(0.001, gt=0, description=_LR_DESC)
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Second-moment decay.")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")


class AdamW(_FloatsAcceptInts):
    """torch.optim.AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""

    name: Literal["adamw"]
    lr: float = Field(0.001, gt=0, description=_LR_DESC)
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Second-moment decay.")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay.")


class RMSprop(_FloatsAcceptInts):
    """torch.optim.RMSprop (Hinton 2012), alpha 0.99."""

    name: Literal["rmsprop"]
    lr: float = Field(0.01, gt=0, description=_LR_DESC)
    alpha: float = Field(0.99, ge=0, lt=1, description="Smoothing constant.")
    eps: float = Field(1e-8, gt=0, description="Denominator epsilon.")
    momentum: float = Field(0.0, ge=0, lt=1, description="Momentum factor.")
    centered: bool = Field(False, description="Normalise by the estimated variance.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")


class Adagrad(_FloatsAcceptInts):
    """torch.optim.Adagrad (Duchi et al. 2011)."""

    name: Literal["adagrad"]
    lr: float = Field(0.01, gt=0, description=_LR_DESC)
    lr_decay: float = Field(0.0, ge=0, description="Learning-rate decay.")
    eps: float = Field(1e-10, gt=0, description="Denominator epsilon.")
    initial_accumulator_value: float = Field(0.0, ge=0, description="Initial sum of squares.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient.")


OptimizerSpec = Annotated[SGD | Adam | AdamW | RMSprop | Adagrad, Field(discriminator="name")]


class ConstantSchedule(_Strict):
    """The learning rate stays at the optimizer's `lr`."""

    name: Literal["constant"]


class StepSchedule(_FloatsAcceptInts):
    """torch StepLR over optimizer steps: lr * gamma ** (step // step_size)."""

    name: Literal["step"]
    step_size: int = Field(100, ge=1, description="Steps between decays.")
    gamma: float = Field(0.1, gt=0, description="Decay factor.")


class ExponentialSchedule(_FloatsAcceptInts):
    """torch ExponentialLR over optimizer steps: lr * gamma ** step."""

    name: Literal["exponential"]
    gamma: float = Field(0.999, gt=0, description="Decay factor per step.")


class CosineSchedule(_FloatsAcceptInts):
    """torch CosineAnnealingLR over steps, optionally after a linear warmup."""

    name: Literal["cosine"]
    t_max: int | None = Field(None, ge=1, description="Steps of one half-period (null: all steps).")
    eta_min: float = Field(0.0, ge=0, description="Minimum learning rate.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps before the cosine.")


class LinearWarmupSchedule(_FloatsAcceptInts):
    """torch LinearLR: from start_factor*lr to lr over warmup_steps, then constant."""

    name: Literal["linear_warmup"]
    warmup_steps: int = Field(100, ge=1, description="Length of the warmup.")
    start_factor: float = Field(0.01, gt=0, le=1, description="Initial multiple of lr.")


ScheduleSpec = Annotated[
    ConstantSchedule | StepSchedule | ExponentialSchedule | CosineSchedule | LinearWarmupSchedule,
    Field(discriminator="name"),
]


class NoClipping(_Strict):
    """No clipping (the recorded norms are still the pre-clip norms)."""

    mode: Literal["none"]


class GlobalNormClipping(_FloatsAcceptInts):
    """torch.nn.utils.clip_grad_norm_: scale all gradients by min(1, max_norm/(total+1e-6))."""

    mode: Literal["global_norm"]
    max_norm: float = Field(1.0, gt=0, description="Largest allowed global L2 norm.")


class ValueClipping(_FloatsAcceptInts):
    """torch.nn.utils.clip_grad_value_: clamp every gradient element into [-clip_value, clip_value]."""

    mode: Literal["value"]
    clip_value: float = Field(1.0, gt=0, description="Largest allowed absolute element.")


class LayerNormClipping(_FloatsAcceptInts):
    """clip_grad_norm_ applied to each layer's parameters separately."""

    mode: Literal["layer_norm"]
    max_norm: float = Field(1.0, gt=0, description="Largest allowed L2 norm per layer.")


class AdaptiveClipping(_FloatsAcceptInts):
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets)."""

    mode: Literal["adaptive"]
    clip_factor: float = Field(0.01, gt=0, description="Largest gradient/weight norm ratio per unit.")
    eps: float = Field(1e-3, gt=0, description="Floor on the weight norm.")


ClippingSpec = Annotated[
    NoClipping | GlobalNormClipping | ValueClipping | LayerNormClipping | AdaptiveClipping,
    Field(discriminator="mode"),
]


class TrainingOptions(_FloatsAcceptInts):
    """How long and in what batches to train."""

    epochs: int = Field(20, ge=1, description="Passes over the training split.")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step.")
    shuffle: bool = Field(True, description="Reshuffle the training split every epoch (seeded).")
    validation_split: float = Field(
        0.2, ge=0, lt=1, description="Fraction held out for validation loss/accuracy per epoch."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (null: epochs decide)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1,
        description="Stop (`early_stop`) when validation loss has not improved for this many "
                    "epochs (null: never).",
    )


class MonitorSpec(_Strict):
    """What is recorded and watched."""

    record_every: int = Field(
        1, ge=1,
        description="Emit every n-th step's record; the first and last step and every step "
                    "with a non-finite value are always emitted.",
    )
    stop_on_explosion: bool = Field(
        True,
        description="Stop training (stop_reason `explosion`) as soon as the online monitor "
                    "confirms runaway gradient growth.",
    )
    stop_on_non_finite: bool = Field(
        True, description="Stop (stop_reason `non_finite`) at the first NaN/Inf loss, "
                          "gradient or weight: nothing useful is computed after it."
    )
    activation_stats: bool = Field(
        True, description="Record per-layer activation mean/std, dead and saturated fractions."
    )


NotifyEvent = Literal["job.succeeded", "job.failed", "job.cancelled", "diagnosis.exploding",
                      "diagnosis.final"]


class NotifySpec(_Strict):
    """A webhook for this job only (same deliveries as ``POST /v1/webhooks``)."""

    url: str = Field(
        min_length=1, max_length=2000,
        description="http(s) URL that receives this job's events, signed with a secret the "
                    "job's creation response returns once (`notify_secret`).")
    events: list[NotifyEvent] = Field(
        ["diagnosis.exploding", "diagnosis.final", "job.succeeded", "job.failed",
         "job.cancelled"], min_length=1, description="Events to deliver.")
