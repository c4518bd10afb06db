"""Mean-field prediction of signal and gradient scale through the depth at initialisation.

For layer ``l`` with fan-in ``n``, fan-out ``m``, weight variance ``v`` and constant bias
``b`` (Poole et al. 2016; Schoenholz et al. 2017), with ``q`` the second moment of its input:

- pre-activation ``z ~ N(b, n v q)`` (``N(0, 1)`` after batch norm);
- output second moment ``E[phi(z)^2]`` (Gauss-Hermite quadrature);
- forward gain ``sqrt(E[phi(z)^2] / q)``;
- backward: the gradient reaching the layer's input has second moment
  ``m v E[dz^2]``, and ``E[dz^2] = E[da^2] E[phi'(z)^2]`` (divided by the pre-batch-norm
  variance when batch norm is on), so the per-layer backward gain is
  ``sqrt(m v E[phi'(z)^2])``;
- weight-gradient norm ``||dW|| ~ sqrt(n m E[a_in^2] E[dz^2])``.

The output layer is linear. Products of per-layer gains over the depth are the predicted
amplification: ~1 for a well-matched initialisation (He for ReLU, Xavier for tanh), >> 1
explodes, << 1 vanishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.spec import (
    HeNormal,
    HeUniform,
    InitSpec,
    LecunNormal,
    NormalInit,
    Orthogonal,
    TrainingSpec,
    UniformInit,
    XavierNormal,
    XavierUniform,
)

__all__ = ["LayerInit", "init_profile", "matched_init", "weight_std"]

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(81)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
# the fine grid of _gauss_prob (pred may be discontinuous): N(0, 1) weights on [-8, 8]
_GRID_U = np.linspace(-8.0, 8.0, 4001)
_GRID_W = np.exp(-0.5 * _GRID_U * _GRID_U)
_GRID_W /= _GRID_W.sum()
_GRID_U.flags.writeable = False
_GRID_W.flags.writeable = False

_GAINS = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
          "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)), "selu": 0.75, "elu": 1.0,
          "softplus": 1.0, "gelu": 1.0}


def _phi(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(phi(z), phi'(z)) for an activation name."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if name == "relu":
            return np.maximum(z, 0), (z > 0).astype(float)
        if name == "leaky_relu":
            return np.where(z > 0, z, 0.01 * z), np.where(z > 0, 1.0, 0.01)
        if name == "elu":
            e = np.expm1(np.minimum(z, 0))
            return np.where(z > 0, z, e), np.where(z > 0, 1.0, e + 1)
        if name == "selu":
            a, s = 1.6732632423543772, 1.0507009873554805
            e = np.expm1(np.minimum(z, 0))
            return s * np.where(z > 0, z, a * e), s * np.where(z > 0, 1.0, a * (e + 1))
        if name == "tanh":
            t = np.tanh(z)
            return t, 1 - t * t
        if name == "sigmoid":
            sg = 0.5 * (1 + np.tanh(0.5 * z))
            return sg, sg * (1 - sg)
        if name == "softplus":
            sp = np.logaddexp(0, z)
            return sp, 0.5 * (1 + np.tanh(0.5 * z))
        if name == "gelu":
            c = math.sqrt(2 / math.pi)
            inner = c * (z + 0.044715 * z**3)
            t = np.tanh(inner)
            d = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * 0.044715 * z * z)
            return 0.5 * z * (1 + t), d
        return z, np.ones_like(z)


def weight_std(init: InitSpec, fan_in: int, fan_out: int, activation: str) -> float:
    """Standard deviation of one initial weight under ``init`` (orthogonal: its RMS)."""
    g = _GAINS.get(activation, 1.0)
    if isinstance(init, XavierUniform | XavierNormal):
        return g * math.sqrt(2.0 / (fan_in + fan_out))
    if isinstance(init, HeNormal | HeUniform):
        return math.sqrt(2.0 / fan_in)
    if isinstance(init, LecunNormal):
        return math.sqrt(1.0 / fan_in)
    if isinstance(init, Orthogonal):
        return init.gain / math.sqrt(max(fan_in, fan_out))
    if isinstance(init, NormalInit):
        return init.std
    if isinstance(init, UniformInit):
        return init.scale / math.sqrt(3.0)
    return math.sqrt(1.0 / fan_in)  # pragma: no cover


def matched_init(activation: str) -> str:
    """The initialisation scheme matched to an activation's gain."""
    if activation in ("relu", "leaky_relu", "elu", "gelu", "softplus"):
        return "he_normal"
    if activation == "selu":
        return "lecun_normal"
    return "xavier_normal"


@dataclass(frozen=True)
class LayerInit:
    """One layer's predicted scales at initialisation."""

    layer: int
    fan_in: int
    fan_out: int
    activation: str
    init: str
    weight_std: float
    batch_norm: bool
    forward_gain: float  # RMS(output) / RMS(input)
    backward_gain: float  # RMS(grad at input) / RMS(grad at output pre-activation)
    output_rms: float
    grad_norm: float  # predicted ||dW||, in units of the output layer's error RMS
    pre_activation_std: float
    active_fraction: float  # P(phi'(z) > 0.01): units passing gradient
    saturated_fraction: float  # tanh/sigmoid: P(output in the flat tails)


def init_profile(spec: TrainingSpec, input_rms: float = 1.0) -> list[LayerInit]:
    """Per-layer predicted forward/backward gains and weight-gradient norms at init."""
    sizes = spec.layer_sizes()
    hidden = spec.model.hidden
    L = len(sizes) - 1
    acts = [h.activation for h in hidden] + ["linear"]
    inits = [(hidden[i].init if i < len(hidden) else None) or spec.model.init for i in range(L)]
    bns = [h.batch_norm for h in hidden] + [False]
    q = input_rms * input_rms
    fwd: list[tuple[float, float, float, float, float, float]] = []
    fracs: list[tuple[float, float]] = []
    # forward pass of second moments
    for i in range(L):
        n, m = sizes[i], sizes[i + 1]
        sd = weight_std(inits[i], n, m, acts[i])
        b = inits[i].bias
        var_z = n * sd * sd * q
        if bns[i]:
            mean, std = 0.0, 1.0
        else:
            mean, std = b, math.sqrt(var_z)
        z = mean + std * _NODES
        a, da = _phi(acts[i], z)
        ea2 = float(np.dot(_WEIGHTS, a * a))
        eda2 = float(np.dot(_WEIGHTS, da * da))
        act = acts[i]
        active = _gauss_prob(mean, std, lambda zz, act=act: _phi(act, zz)[1] > 0.01)
        if acts[i] == "tanh":
            sat = _gauss_prob(mean, std, lambda zz: np.abs(np.tanh(zz)) > 0.99)
        elif acts[i] == "sigmoid":
            sat = _gauss_prob(mean, std, lambda zz: np.abs(np.tanh(0.5 * zz)) > 0.98)
        else:
            sat = 0.0
        fwd.append((sd, q, ea2, eda2, var_z, std))
        fracs.append((active, sat))
        q = ea2 if math.isfinite(ea2) else math.inf
    # backward pass: error second moment at each layer's pre-activation (output: 1)
    out: list[LayerInit] = []
    ez2 = 1.0
    grads: list[float] = [0.0] * L
    bgains: list[float] = [1.0] * L
    ez = [0.0] * L
    for i in range(L - 1, -1, -1):
        sd, q_in, _, _, _, _ = fwd[i]
        n, m = sizes[i], sizes[i + 1]
        ez[i] = ez2
        grads[i] = math.sqrt(max(n * m * q_in * ez2, 0.0))
        if i > 0:
            _, _, _, eda2_prev, var_prev, _ = fwd[i - 1]
            da2 = m * sd * sd * ez2
            nxt = da2 * eda2_prev
            if bns[i - 1]:
                nxt /= max(var_prev, 1e-300)
            bgains[i] = math.sqrt(max(nxt / ez2, 0.0)) if ez2 > 0 else math.nan
            ez2 = nxt
    for i in range(L):
        sd, q_in, ea2, _, _, std = fwd[i]
        out.append(LayerInit(
            layer=i, fan_in=sizes[i], fan_out=sizes[i + 1], activation=acts[i],
            init=getattr(inits[i], "scheme", "?"), weight_std=sd, batch_norm=bns[i],
            forward_gain=math.sqrt(ea2 / q_in) if q_in > 0 else math.nan,
            backward_gain=bgains[i], output_rms=math.sqrt(ea2), grad_norm=grads[i],
            pre_activation_std=std, active_fraction=fracs[i][0], saturated_fraction=fracs[i][1],
        ))
    return out


def _gauss_prob(mean: float, std: float, pred: Any) -> float:
    """P(pred(z)) for z ~ N(mean, std^2), on a fine grid (pred may be discontinuous)."""
    if not (math.isfinite(mean) and math.isfinite(std)):
        return math.nan
    if std <= 0:
        return float(bool(pred(np.array([mean]))[0]))
    return float(np.dot(_GRID_W, pred(mean + std * _GRID_U).astype(float)))
