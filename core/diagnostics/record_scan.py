"""What the online monitor reads off one step record's layers outside its per-step pass.

Where the first non-finite value is, in computation order (activation, loss, gradient,
weight, update), with the layers that hold one; the layer figures of a record whose single
pass met a non-finite value, computed pass by pass; and the layers that hold most of the
gradient, named in the monitor's explosion and growth alerts. Pure functions of the record.
"""

from __future__ import annotations

import math

from core.telemetry import LayerRecord, StepRecord, TensorKind

__all__ = [
    "first_non_finite",
    "growing_layers",
    "layer_figures",
    "nan_or_inf",
]


def first_non_finite(record: StepRecord) -> tuple[int | None, TensorKind, str, list[int]] | None:
    """(layer, tensor, 'nan'|'inf', layers) of the first non-finite value in computation order."""
    layers = record.layers
    bad = [lr.layer for lr in layers
           if (lr.act_mean is not None and not math.isfinite(lr.act_mean))
           or (lr.act_std is not None and not math.isfinite(lr.act_std))]
    if bad:
        lr0 = layers[bad[0]] if bad[0] < len(layers) else layers[0]
        v = lr0.act_mean if lr0.act_mean is not None and not math.isfinite(lr0.act_mean) else lr0.act_std
        return bad[0], "activation", nan_or_inf(v), bad
    if not math.isfinite(record.loss):
        return None, "loss", nan_or_inf(record.loss), []
    bad = [lr.layer for lr in layers if not math.isfinite(lr.grad_norm)]
    if bad:
        v = layers[bad[-1]].grad_norm if bad[-1] < len(layers) else math.nan
        return bad[-1], "gradient", nan_or_inf(v), bad
    if not math.isfinite(record.grad_norm):
        return None, "gradient", nan_or_inf(record.grad_norm), []
    bad = [lr.layer for lr in layers if not math.isfinite(lr.weight_norm)]
    if bad:
        return bad[0], "weight", nan_or_inf(layers[bad[0]].weight_norm), bad
    bad = [lr.layer for lr in layers if not math.isfinite(lr.update_norm)]
    if bad:
        return bad[0], "update", nan_or_inf(layers[bad[0]].update_norm), bad
    return None


def layer_figures(layers: list[LayerRecord]) -> tuple[float, float, float, list[float]]:
    """(sum of squared update norms, largest update-to-weight ratio, largest activation std,
    weight norms) of a record's layers, each in its own pass: what :meth:`Monitor.observe`
    computes in one pass, for a record its scan found non-finite values in."""
    usq = 0.0
    for lr in layers:
        usq += lr.update_norm * lr.update_norm
    rewrite = 0.0
    for lr in layers:
        if lr.weight_norm > 0:
            r = lr.update_norm / lr.weight_norm
            if r > rewrite:
                rewrite = r
    act = 0.0
    for lr in layers:
        if lr.act_std is not None and lr.act_std > act:
            act = lr.act_std
    return usq, rewrite, act, [lr.weight_norm for lr in layers]


def nan_or_inf(v: float | None) -> str:
    return "nan" if v is None or v != v else "inf"


def growing_layers(record: StepRecord) -> list[int]:
    """Layers holding most of the gradient: those above half the largest layer norm."""
    norms = [lr.grad_norm for lr in record.layers]
    if not norms:
        return []
    top = max(norms)
    return [lr.layer for lr in record.layers if lr.grad_norm >= 0.5 * top]
