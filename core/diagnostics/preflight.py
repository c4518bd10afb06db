"""``preflight(spec)``: cost and explosion risk of a spec, without training it.

Analytic part (no data touched): parameter count, FLOPs per step, a memory estimate and the
mean-field prediction of signal and gradient scale through the depth at initialisation
(:mod:`core.diagnostics.analytic`). Probe part: the problem is built (:mod:`core.problem`:
data + initial weights, as training would) and one forward/backward pass on one batch measures the per-layer gradient
norms and the update-to-weight ratio the first optimizer step would take, which checks the
prediction and catches what it cannot see (data scale, learning rate, clipping).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.clipping import clip_flat
from core.diagnostics import recommend as R
from core.diagnostics.analytic import LayerInit, init_profile
from core.diagnostics.reference import data_scale
from core.diagnostics.report import Finding, LayerPreflight, PreflightReport, RiskLevel, fmt
from core.optimizers import make_optimizer
from core.problem import Problem
from core.schedules import make_schedule
from core.spec import SGD, Adagrad, Adam, AdamW, RMSprop, TrainingSpec, data_shape

__all__ = ["memory_breakdown", "preflight"]

# Risk thresholds. Per-layer backward gain: 1 keeps the gradient's scale through the depth.
# The total gain over the depth (product) decides: 1e3 (three orders of magnitude) explodes
# the first layers' updates relative to the last; 1e-3 leaves them untrained.
# Calibrated on measured sweeps (bench/preflight_calibration.py: ReLU and tanh, depth 2-8,
# init std 0.05-1, lr 1e-3-1, 216 runs): a gain of 30-1e3, or activations growing >= 2x per
# layer, trained without exploding at every lr whose first update stayed small, so they are
# a "medium" risk (reported, not predicted to explode); whether a run explodes is decided by
# the first update's size (lr x gradient), or by a gain past 1e3.
DEPTH_GAIN_CRITICAL = 1e3
DEPTH_GAIN_HIGH = 30.0
DEPTH_GAIN_VANISH = 1e-3
# First update-to-weight ratio: >= 0.5 rewrites a layer in one step; >= 0.1 is far above the
# healthy ~1e-3.
# Adaptive optimizers' first steps are ~lr per element (RMSprop 10x lr): ratios of 0.1-0.2 on
# the first step are common and harmless. "high" starts at 0.4: in the calibration sweeps
# (above) SGD runs with a first ratio of 0.25-0.4 trained without exploding as often as not.
UPDATE_CRITICAL = 0.5
UPDATE_HIGH = 0.4
UPDATE_MEDIUM = 0.05
# Units: fraction of a ReLU layer predicted active / of a tanh-sigmoid layer in its flat tails.
ACTIVE_MIN = 0.1
SATURATED_MAX = 0.5
_DYING = ("relu", "elu", "selu", "gelu", "softplus")  # zero (or ~zero) slope on one side
DATA_SCALE_HIGH = 10.0
_RISK_ORDER: dict[RiskLevel, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def _flops(spec: TrainingSpec) -> tuple[int, int]:
    """(flops per optimizer step, total) for matmuls, activations, batch norm, loss, update."""
    sizes = spec.layer_sizes()
    b = min(spec.training.batch_size, spec.n_train_samples())
    params = spec.parameter_count()
    flops = 0
    for i in range(len(sizes) - 1):
        mm = 2 * b * sizes[i] * sizes[i + 1]
        flops += mm  # forward
        flops += mm * (2 if i > 0 else 1)  # backward: dW always, dX except for the input layer
        flops += 2 * b * sizes[i + 1]  # bias add and its gradient
    for h in spec.model.hidden:
        flops += 8 * b * h.units  # activation forward + backward (a few ops per unit)
        if h.batch_norm:
            flops += 20 * b * h.units
    flops += 10 * b * sizes[-1]  # loss and its gradient
    per_param = {"sgd": 4, "adam": 12, "adamw": 14, "rmsprop": 8, "adagrad": 6}[spec.optimizer.name]
    flops += (per_param + 6) * params  # update, clipping and norm telemetry (sums of squares)
    return flops, flops * spec.total_steps()


def memory_breakdown(spec: TrainingSpec) -> dict[str, int]:
    """Bytes: parameters, gradients, optimizer state, activations, data, scratch (the parts of
    the report's ``memory_bytes``)."""
    item = 4 if spec.dtype == "float32" else 8
    params = spec.parameter_count()
    opt = spec.optimizer
    if isinstance(opt, SGD):
        state = 1 if opt.momentum > 0 else 0
    elif isinstance(opt, Adam | AdamW):
        state = 2
    elif isinstance(opt, RMSprop):
        state = 1 + (opt.momentum > 0) + int(opt.centered)
    elif isinstance(opt, Adagrad):
        state = 1
    else:  # pragma: no cover
        state = 2
    sizes = spec.layer_sizes()
    b = min(spec.training.batch_size, spec.n_train_samples())
    units = sum(sizes[1:])
    hidden = sum(sizes[1:-1])
    bn = sum(h.units for h in spec.model.hidden if h.batch_norm)
    data_rows = data_shape(spec.data).n_samples
    return {
        "parameters": params * item,
        "gradients": params * item,
        "optimizer_state": state * params * item,
        "update_buffer": params * item,
        "norm_scratch": params * 8,  # squares in float64 for the telemetry norms
        "activations": b * (units + hidden + 3 * bn) * item + b * sizes[0] * item,
        "data": data_rows * (sizes[0] + sizes[-1]) * 8,
    }


def _risk(levels: list[RiskLevel]) -> RiskLevel:
    return max(levels, key=lambda r: _RISK_ORDER[r]) if levels else "low"


def preflight(spec: TrainingSpec | dict[str, Any], *, probe: bool = True) -> PreflightReport:
    """Cost, predicted gradient amplification at init (checked by a probe pass), risk, fixes."""
    if not isinstance(spec, TrainingSpec):
        spec = TrainingSpec.model_validate(spec)
    scale = data_scale(spec) if probe else None
    x_rms = scale.x_std if scale is not None and scale.x_std > 0 else 1.0
    prof = init_profile(spec, x_rms)
    flops, flops_total = _flops(spec)
    mem = memory_breakdown(spec)
    measured = _probe(spec) if probe else None

    out_grad = prof[-1].grad_norm
    layers: list[LayerPreflight] = []
    for li in prof:
        m = measured[li.layer] if measured is not None else None
        layers.append(LayerPreflight(
            layer=li.layer, fan_in=li.fan_in, fan_out=li.fan_out, activation=li.activation,
            init=li.init, weight_std=li.weight_std, forward_gain=li.forward_gain,
            backward_gain=li.backward_gain,
            predicted_grad_norm_ratio=li.grad_norm / out_grad if out_grad > 0 else math.nan,
            measured_grad_norm_ratio=m["ratio"] if m else None,
            measured_grad_norm=m["grad_norm"] if m else None,
            measured_update_ratio=m["update_ratio"] if m else None,
            activation_rms=li.output_rms,
        ))
    depth_gain = _depth_gain(prof)
    pred_amp = layers[0].predicted_grad_norm_ratio
    meas_amp = layers[0].measured_grad_norm_ratio

    risks, levels = _risks(spec, prof, depth_gain, layers, scale)
    recs = _recommend(spec, prof, depth_gain, layers, scale, x_rms)
    risk = _risk(levels)
    summary = _summary(spec, risk, depth_gain, risks, recs, flops, mem)
    return PreflightReport(
        parameter_count=spec.parameter_count(), flops_per_step=flops, flops_total=flops_total,
        total_steps=spec.total_steps(), memory_bytes=sum(mem.values()), memory_breakdown=mem,
        predicted_amplification=pred_amp, measured_amplification=meas_amp,
        predicted_depth_gain=depth_gain,
        predicted_output_rms=prof[-1].output_rms, layers=layers, risk=risk, risks=risks,
        recommendations=recs, summary=summary,
    )


def _depth_gain(prof: list[LayerInit]) -> float:
    """Product of the hidden-to-hidden backward gains (the output layer's fan-out, set by the
    data, is left out: ~1 is healthy whatever the number of classes)."""
    g = 1.0
    for li in prof[1:-1]:
        g *= li.backward_gain if math.isfinite(li.backward_gain) else 0.0
    return g


def _peak_lr(spec: TrainingSpec) -> tuple[float, int]:
    """The schedule's largest learning rate over the run and its first step."""
    total = spec.total_steps()
    sched = make_schedule(spec.schedule, spec.optimizer.lr, total)
    n = min(total, 4000)
    steps = sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(n)})
    step_size = getattr(spec.schedule, "step_size", None)
    if isinstance(step_size, int):
        steps = sorted(set(steps) | set(range(0, total, step_size)))
    best, at = spec.optimizer.lr, 0
    for k in steps:
        v = sched(k)
        if v > best:
            best, at = v, k
    return best, at


def _probe(spec: TrainingSpec) -> list[dict[str, float]] | None:
    """Per layer: measured weight-gradient norm, its ratio to the output layer's, and the
    update-to-weight ratio of the first optimizer step, on the first training batch."""
    try:
        problem = Problem(spec)
        b = min(spec.training.batch_size, len(problem.data.X_train))
        X, y = problem.data.X_train[:b], problem.data.y_train[:b]
        with np.errstate(all="ignore"):
            _, grads = problem.gradients(X, y)
            net = problem.network
            layout = net.layout
            names = [n for n, _ in problem.parameters()]
            flat_g = np.concatenate([g.reshape(-1) for g in grads]).astype(net.dtype)
            params = net.flat.copy()
            gsq = layout.layer_sumsq(flat_g)
            clip_flat(spec.clipping, flat_g, params, layout, gsq)
            delta = make_optimizer(spec.optimizer, params).step(flat_g, spec.optimizer.lr)
            out: list[dict[str, float]] = []
            for i in range(layout.n_layers):
                k = names.index(f"layers.{i}.weight")
                slot = layout.slots[k]
                g = float(np.linalg.norm(grads[k].astype(np.float64)))
                w = float(np.linalg.norm(net.flat[slot.offset:slot.stop].astype(np.float64)))
                u = float(np.linalg.norm(delta[slot.offset:slot.stop].astype(np.float64)))
                out.append({"grad_norm": g, "update_ratio": u / w if w > 0 else math.inf})
        last = out[-1]["grad_norm"]
        for d in out:
            d["ratio"] = d["grad_norm"] / last if last > 0 else math.nan
        return out
    except Exception:
        return None


def _risks(spec: TrainingSpec, prof: list[LayerInit], depth_gain: float,
           layers: list[LayerPreflight], scale: Any) -> tuple[list[Finding], list[RiskLevel]]:
    risks: list[Finding] = []
    measured = layers[0].measured_grad_norm_ratio if layers else None
    levels: list[RiskLevel] = []
    fwd = [li.forward_gain for li in prof[1:-1]]
    fwd_gm = float(np.exp(np.mean(np.log(fwd)))) if fwd and all(f > 0 for f in fwd) else 1.0
    if depth_gain >= DEPTH_GAIN_HIGH or fwd_gm >= 2.0:
        level: RiskLevel = "critical" if depth_gain >= DEPTH_GAIN_CRITICAL else "medium"
        levels.append(level)
        risks.append(Finding(
            kind="depth_amplification", severity="critical" if level == "critical" else "warning",
            step=0, layers=list(range(len(prof))),
            evidence={"predicted_depth_gain": depth_gain, "forward_gain_per_layer": fwd_gm,
                      "predicted_output_rms": prof[-1].output_rms,
                      "measured_amplification": measured},
            message=(f"At init the backpropagated gradient RMS is predicted to grow "
                     f"{fmt(depth_gain)}x through the hidden layers (predicted_depth_gain; "
                     f"activations x{fmt(fwd_gm)} per layer): the initial weights are too large "
                     "for their fan-in and activation." + (
                         f" Measured on the first batch, the first layer's weight gradient is "
                         f"{fmt(measured)}x the output layer's (measured_amplification: the "
                         "weight gradients also scale with each layer's input, which the "
                         "depth gain does not count)." if measured is not None else "")),
        ))
    elif depth_gain <= DEPTH_GAIN_VANISH:
        levels.append("high")
        risks.append(Finding(
            kind="vanishing_gradients", severity="warning", step=0, layers=[0],
            evidence={"predicted_depth_gain": depth_gain},
            message=(f"At init the backpropagated gradient is predicted to shrink to "
                     f"{depth_gain:.3g}x of its size on the way to the first layer: the early "
                     "layers will barely learn."),
        ))
    elif depth_gain >= 3.0 or depth_gain <= 1e-1:
        levels.append("medium")
    for li in prof[:-1]:
        if li.activation in _DYING and li.active_fraction < ACTIVE_MIN:
            levels.append("critical")
            risks.append(Finding(
                kind="dead_units", severity="critical", step=0, layers=[li.layer],
                evidence={"predicted_active_fraction": li.active_fraction},
                message=(f"Layer {li.layer}'s pre-activations are predicted positive for only "
                         f"{li.active_fraction:.1%} of inputs: its ReLUs start dead."),
            ))
            break
        if li.saturated_fraction >= SATURATED_MAX:
            levels.append("high")
            risks.append(Finding(
                kind="saturated_units", severity="warning", step=0, layers=[li.layer],
                evidence={"predicted_saturated_fraction": li.saturated_fraction},
                message=(f"{li.saturated_fraction:.0%} of layer {li.layer}'s outputs are predicted "
                         "in the flat tails of its activation at init: gradients through them "
                         "vanish."),
            ))
            break
    ratios = [lp.measured_update_ratio for lp in layers if lp.measured_update_ratio is not None]
    if ratios:
        top = max(ratios)
        peak, peak_step = _peak_lr(spec)
        if isinstance(spec.optimizer, SGD) and peak > 2 * spec.optimizer.lr:
            # plain/momentum SGD steps scale with the learning rate
            scaled = top * peak / spec.optimizer.lr
            if scaled >= UPDATE_HIGH:
                levels.append("critical" if scaled >= UPDATE_CRITICAL else "high")
                risks.append(Finding(
                    kind="high_update_ratio", severity="warning", step=peak_step, layers=[],
                    evidence={"peak_lr": peak, "peak_step": peak_step, "scaled_update_ratio": scaled},
                    message=(f"The schedule raises the learning rate to {fmt(peak)} at step "
                             f"{peak_step}: the update-to-weight ratio would then be "
                             f"~{fmt(scaled)}."),
                ))
        if top >= UPDATE_HIGH:
            level = "critical" if top >= UPDATE_CRITICAL else "high"
            levels.append(level)
            risks.append(Finding(
                kind="high_update_ratio", severity="critical" if level == "critical" else "warning",
                step=0, layers=[lp.layer for lp in layers
                                if (lp.measured_update_ratio or 0) >= UPDATE_HIGH],
                evidence={"first_update_ratio": top, "lr": spec.optimizer.lr},
                message=(f"The first update's update-to-weight ratio ||update|| / ||weight|| "
                         f"would be {fmt(top)} in its largest layer (first_update_ratio, on the "
                         "probe batch; healthy: ~1e-3): the gradient is far too large for the "
                         "learning rate and these weights. A run's own ratio at step 0 is "
                         "smaller when clipping or the optimizer's first steps bound it."),
            ))
        elif top >= UPDATE_MEDIUM:
            levels.append("medium")
    if scale is not None and not scale.standardized:
        big_x = scale.x_std >= DATA_SCALE_HIGH
        big_y = scale.y_std is not None and scale.y_std >= DATA_SCALE_HIGH
        if big_x or big_y:
            levels.append("medium")
            risks.append(Finding(
                kind="data_scale", severity="warning", step=None, layers=[0] if big_x else [],
                evidence={"input_rms": scale.x_std, "target_rms": scale.y_std},
                message=("The data are not standardised (inputs RMS "
                         f"{scale.x_std:.3g}" + (f", targets RMS {scale.y_std:.3g}" if big_y else "")
                         + "): gradients scale with them."),
            ))
    return risks, levels


def _recommend(spec: TrainingSpec, prof: list[LayerInit], depth_gain: float,
               layers: list[LayerPreflight], scale: Any, x_rms: float) -> list[Any]:
    recs: list[Any] = []
    acts = {h.activation for h in spec.model.hidden}
    dead = any(li.activation in _DYING and li.active_fraction < ACTIVE_MIN for li in prof[:-1])
    saturated = any(li.saturated_fraction >= SATURATED_MAX for li in prof[:-1])
    if dead or (saturated and spec.model.init.bias != 0):
        recs.append(R.reset_bias(spec))
    if depth_gain >= DEPTH_GAIN_HIGH or depth_gain <= DEPTH_GAIN_VANISH:
        recs.append(R.change_init(spec, x_rms))
        if depth_gain <= DEPTH_GAIN_VANISH and acts & {"sigmoid", "tanh"}:
            recs.append(R.change_activation(spec, "relu", "its derivative is 1 on the active "
                                            "side, so depth does not shrink the gradient."))
        recs.append(R.batch_norm(spec))
    if scale is not None and not scale.standardized and (
            scale.x_std >= DATA_SCALE_HIGH or (scale.y_std or 0) >= DATA_SCALE_HIGH):
        recs.append(R.standardize_data(spec, scale.x_std, scale.y_std))
    ratios = [lp.measured_update_ratio for lp in layers if lp.measured_update_ratio is not None]
    peak, peak_step = _peak_lr(spec)
    if (ratios and isinstance(spec.optimizer, SGD) and peak > 2 * spec.optimizer.lr
            and max(ratios) * peak / spec.optimizer.lr >= UPDATE_HIGH):
        recs.append(R.undo_lr_increase(spec, spec.optimizer.lr, peak, peak_step))
    if ratios and max(ratios) >= UPDATE_HIGH:
        recs.append(R.lower_learning_rate(spec, max(ratios), None))
        grads = [lp.measured_grad_norm for lp in layers if lp.measured_grad_norm is not None]
        if grads:
            total = math.sqrt(sum(g * g for g in grads))
            # clip so that the first step's update ratio would be ~1e-2
            clip = total * R.TARGET_UPDATE_RATIO / max(ratios)
            recs.append(R.clip_gradients(spec, clip, 1, None))
    seen: set[str] = set()
    out = []
    for r in recs:
        if r is None:
            continue
        key = repr(sorted(r.spec_patch.items()))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _summary(spec: TrainingSpec, risk: RiskLevel, depth_gain: float, risks: list[Finding],
             recs: list[Any], flops: int, mem: dict[str, int]) -> str:
    parts = [f"Risk {risk}: {spec.parameter_count():,} parameters, {flops:.3g} FLOPs per step, "
             f"~{sum(mem.values()) / 2**20:.3g} MiB; predicted gradient gain through the depth "
             f"at init {depth_gain:.3g}x."]
    parts += [r.message for r in risks]
    if recs:
        parts.append(f"First fix: {recs[0].action.replace('_', ' ')}.")
    return " ".join(parts)
