"""Activation functions: forward ``a = f(z)`` and backward ``dz = da * f'(z)``.

Definitions match PyTorch (``torch.nn.functional``): leaky ReLU slope 0.01, ELU alpha 1,
SELU with its fixed constants, softplus with beta 1 and threshold 20, GELU with the tanh
approximation. Every function is overflow-safe and silent: huge inputs give saturated or
infinite outputs (the data a diagnosis needs), never a NumPy warning.

All arrays have shape ``(batch, units)``; ``out`` may be a (possibly strided) view to write
the result into, so the network can keep all hidden activations in one buffer. ``backward``
may overwrite ``da`` (a scratch array of the caller's) with the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ACTIVATION_FUNCTIONS", "ActivationFn", "get_activation"]

Array = np.ndarray

LEAKY_SLOPE = 0.01
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_BETA = math.sqrt(2.0 / math.pi)
GELU_KAPPA = 0.044715
SOFTPLUS_THRESHOLD = 20.0


@dataclass(frozen=True, slots=True)
class ActivationFn:
    """A named activation: ``forward(z, out) -> a`` and ``backward(da, z, a) -> dz``.

    ``family`` says which unit statistics apply: ``"relu"`` (dead units), ``"saturating"``
    (saturated units; ``saturation_center``/``saturation_halfwidth`` define the flat tails as
    ``|a - center| > halfwidth``) or ``"other"``.
    """

    name: str
    forward: Callable[[Array, Array], Array]
    backward: Callable[[Array, Array, Array], Array]
    family: str = "other"
    saturation_center: float = 0.0
    saturation_halfwidth: float = 0.0


# NumPy's maximum against a scalar runs ~3x slower than against an array (its SIMD loop wants
# two array operands); the same comparison, the same numbers (NaN, -0.0 and +-inf included).
_ZEROS_MAX = 1 << 20  # elements of the largest shared zeros array
_zeros_cache: dict[np.dtype, Array] = {}


def _zeros(dtype: np.dtype, n: int) -> Array | None:
    """A read-only 1-D array of at least ``n`` zeros (None when ``n`` is very large)."""
    if n > _ZEROS_MAX:
        return None
    zeros = _zeros_cache.get(dtype)
    if zeros is None or zeros.size < n:
        zeros = np.zeros(max(n, 4096), dtype=dtype)
        zeros.flags.writeable = False
        _zeros_cache[dtype] = zeros
    return zeros


def _relu_fwd(z: Array, out: Array) -> Array:
    zeros = _zeros(z.dtype, z.size)
    if zeros is not None:
        return np.maximum(z, zeros[:z.size].reshape(z.shape), out=out)
    row = _zeros(z.dtype, z.shape[-1]) if z.ndim else None
    if row is not None:
        return np.maximum(z, row[:z.shape[-1]], out=out)
    return np.maximum(z, 0, out=out)


def _relu_bwd(da: Array, z: Array, a: Array) -> Array:
    return np.multiply(da, z > 0, out=da)


def _leaky_fwd(z: Array, out: Array) -> Array:
    np.multiply(z, LEAKY_SLOPE, out=out)
    return np.maximum(z, out, out=out)


def _leaky_bwd(da: Array, z: Array, a: Array) -> Array:
    return np.where(z > 0, da, da * LEAKY_SLOPE)


def _elu_fwd(z: Array, out: Array) -> Array:
    with np.errstate(over="ignore", invalid="ignore"):
        neg = np.expm1(np.minimum(z, 0))
    np.copyto(out, np.where(z > 0, z, neg))
    return out


def _elu_bwd(da: Array, z: Array, a: Array) -> Array:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(z > 0, da, da * np.exp(np.minimum(z, 0)))


def _selu_fwd(z: Array, out: Array) -> Array:
    with np.errstate(over="ignore", invalid="ignore"):
        neg = SELU_ALPHA * np.expm1(np.minimum(z, 0))
    np.copyto(out, np.where(z > 0, z, neg))
    out *= SELU_SCALE
    return out


def _selu_bwd(da: Array, z: Array, a: Array) -> Array:
    with np.errstate(over="ignore", invalid="ignore"):
        slope = np.where(z > 0, SELU_SCALE, (SELU_SCALE * SELU_ALPHA) * np.exp(np.minimum(z, 0)))
    return da * slope.astype(da.dtype, copy=False)


def _tanh_fwd(z: Array, out: Array) -> Array:
    return np.tanh(z, out=out)


def _tanh_bwd(da: Array, z: Array, a: Array) -> Array:
    slope = np.square(a)
    np.subtract(1, slope, out=slope)
    return np.multiply(da, slope, out=da)


def _sigmoid_fwd(z: Array, out: Array) -> Array:
    # exp(-|z|) never overflows: 1/(1+e) for z >= 0, e/(1+e) for z < 0.
    e = np.exp(-np.abs(z))
    np.divide(np.where(z >= 0, 1, e), 1 + e, out=out)
    return out


def _sigmoid_bwd(da: Array, z: Array, a: Array) -> Array:
    return da * (a * (1 - a))


def _softplus_fwd(z: Array, out: Array) -> Array:
    # torch: z where z > threshold, else log1p(exp(z)); exp(z) <= exp(20) cannot overflow.
    np.log1p(np.exp(np.minimum(z, SOFTPLUS_THRESHOLD)), out=out)
    np.copyto(out, z, where=z > SOFTPLUS_THRESHOLD)
    return out


def _softplus_bwd(da: Array, z: Array, a: Array) -> Array:
    e = np.exp(np.minimum(z, SOFTPLUS_THRESHOLD))
    return np.where(z > SOFTPLUS_THRESHOLD, da, da * (e / (e + 1)))


def _gelu_fwd(z: Array, out: Array) -> Array:
    with np.errstate(over="ignore", invalid="ignore"):
        inner = GELU_BETA * (z + GELU_KAPPA * (z * z * z))
        np.tanh(inner, out=inner)
        inner += 1
        np.multiply(0.5 * z, inner, out=out)
    return out


def _gelu_bwd(da: Array, z: Array, a: Array) -> Array:
    # torch's GeluBackward (approximate="tanh") formula, term by term.
    with np.errstate(over="ignore", invalid="ignore"):
        z_sq = z * z
        t = np.tanh(GELU_BETA * (z + GELU_KAPPA * z_sq * z))
        left_derivative = 0.5 * (1 + t)
        right_derivative = (1 - t * t) * (GELU_BETA * (1 + 3 * GELU_KAPPA * z_sq))
        return da * (left_derivative + 0.5 * z * right_derivative)


def _linear_fwd(z: Array, out: Array) -> Array:
    np.copyto(out, z)
    return out


def _linear_bwd(da: Array, z: Array, a: Array) -> Array:
    return da


ACTIVATION_FUNCTIONS: dict[str, ActivationFn] = {
    "relu": ActivationFn("relu", _relu_fwd, _relu_bwd, "relu"),
    "leaky_relu": ActivationFn("leaky_relu", _leaky_fwd, _leaky_bwd, "relu"),
    "elu": ActivationFn("elu", _elu_fwd, _elu_bwd),
    "selu": ActivationFn("selu", _selu_fwd, _selu_bwd),
    "tanh": ActivationFn("tanh", _tanh_fwd, _tanh_bwd, "saturating", 0.0, 0.99),
    "sigmoid": ActivationFn("sigmoid", _sigmoid_fwd, _sigmoid_bwd, "saturating", 0.5, 0.49),
    "softplus": ActivationFn("softplus", _softplus_fwd, _softplus_bwd),
    "gelu": ActivationFn("gelu", _gelu_fwd, _gelu_bwd),
    "linear": ActivationFn("linear", _linear_fwd, _linear_bwd),
}


def get_activation(name: str) -> ActivationFn:
    """The activation called ``name`` (one of :data:`core.spec.ACTIVATIONS`)."""
    try:
        return ACTIVATION_FUNCTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATION_FUNCTIONS)}"
        ) from None
