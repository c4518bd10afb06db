"""Weight and bias initialisation schemes (torch.nn.init semantics, our weight layout).

Weights have shape ``(fan_in, fan_out)`` and are used as ``x @ W + b``; torch stores the
transpose ``(fan_out, fan_in)``, so ``fan_in``/``fan_out`` below mean the same thing as in
``torch.nn.init`` for an ``nn.Linear(fan_in, fan_out)``. Every random number comes from the
``numpy.random.Generator`` passed in: never from global state.

==============  ==============================================================
scheme          distribution of each weight
==============  ==============================================================
xavier_uniform  U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))
xavier_normal   N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))
he_uniform      U(-a, a), a = sqrt(2) * sqrt(3 / fan_in) = sqrt(6 / fan_in)
he_normal       N(0, 2 / fan_in)
lecun_normal    N(0, 1 / fan_in)
orthogonal      (semi-)orthogonal matrix times ``spec.gain``
normal          N(0, spec.std^2)
uniform         U(-spec.scale, spec.scale)
==============  ==============================================================

``gain`` is :func:`gain` of the layer's activation for the Xavier schemes. The He schemes
always use the ReLU gain sqrt(2) whatever the activation (the contract in DESIGN.md): a
He-initialised tanh network is a legitimate experiment, not something to "fix" silently.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import DTypeLike

from core.spec import (
    HeNormal,
    HeUniform,
    InitSpec,
    LecunNormal,
    NormalInit,
    Orthogonal,
    UniformInit,
    XavierNormal,
    XavierUniform,
)

__all__ = ["gain", "init_bias", "init_weight"]

# torch.nn.init.calculate_gain; elu, softplus and gelu have no torch gain (torch raises):
# we use 1, the gain of the identity, which is what their near-linear positive side suggests.
_GAINS: dict[str, float] = {
    "linear": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "selu": 3.0 / 4,
    "elu": 1.0,
    "softplus": 1.0,
    "gelu": 1.0,
}


def gain(activation: str) -> float:
    """Recommended scaling of the weight std for ``activation`` (torch ``calculate_gain``).

    Parameters
    ----------
    activation : str
        One of ``relu`` (sqrt(2)), ``leaky_relu`` (sqrt(2 / (1 + 0.01^2)), slope 0.01),
        ``tanh`` (5/3), ``selu`` (3/4), ``sigmoid`` and ``linear`` (1). ``elu``,
        ``softplus`` and ``gelu`` have no gain in torch; they get 1.

    Returns
    -------
    float
        The gain.

    Raises
    ------
    ValueError
        For an unknown activation.
    """
    try:
        return _GAINS[activation]
    except KeyError:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(_GAINS)}"
        ) from None


def init_weight(
    spec: InitSpec,
    fan_in: int,
    fan_out: int,
    activation: str,
    rng: np.random.Generator,
    dtype: DTypeLike,
) -> np.ndarray:
    """A freshly initialised weight matrix of shape ``(fan_in, fan_out)`` and type ``dtype``.

    Parameters
    ----------
    spec : InitSpec
        The scheme and its parameters (see the module docstring for the distributions).
    fan_in, fan_out : int
        Input and output width of the layer (both >= 1).
    activation : str
        The activation following the layer; only the Xavier schemes use it (via :func:`gain`).
    rng : numpy.random.Generator
        Source of all randomness; the same generator state gives the same matrix.
    dtype : dtype-like
        ``float32`` or ``float64``. Samples are drawn in float64 and then cast, so a given
        seed gives the same values (up to rounding) in both precisions.

    Returns
    -------
    ndarray of shape ``(fan_in, fan_out)``
    """
    if fan_in < 1 or fan_out < 1:
        raise ValueError(f"fan_in and fan_out must be >= 1, got {fan_in} and {fan_out}")
    shape = (fan_in, fan_out)
    w: np.ndarray
    if isinstance(spec, XavierUniform):
        bound = gain(activation) * math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-bound, bound, shape)
    elif isinstance(spec, XavierNormal):
        w = rng.normal(0.0, gain(activation) * math.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif isinstance(spec, HeUniform):
        bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
        w = rng.uniform(-bound, bound, shape)
    elif isinstance(spec, HeNormal):
        w = rng.normal(0.0, math.sqrt(2.0) / math.sqrt(fan_in), shape)
    elif isinstance(spec, LecunNormal):
        w = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
    elif isinstance(spec, Orthogonal):
        w = spec.gain * _orthogonal(fan_in, fan_out, rng)
    elif isinstance(spec, NormalInit):
        w = rng.normal(0.0, spec.std, shape)
    elif isinstance(spec, UniformInit):
        w = rng.uniform(-spec.scale, spec.scale, shape)
    else:  # pragma: no cover - the spec union is exhaustive
        raise ValueError(f"unknown init scheme {getattr(spec, 'scheme', spec)!r}")
    return np.asarray(w, dtype=dtype)


def init_bias(spec: InitSpec, fan_out: int, dtype: DTypeLike) -> np.ndarray:
    """The initial bias: ndarray of shape ``(fan_out,)`` filled with ``spec.bias``."""
    return np.full(fan_out, spec.bias, dtype=dtype)


def _orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(rows, cols)`` matrix with orthonormal columns (rows >= cols) or rows (rows < cols).

    As ``torch.nn.init.orthogonal_`` (Saxe et al. 2014): QR of a standard normal matrix,
    with the signs of R's diagonal folded into Q so that Q is Haar-distributed
    (Mezzadri 2007).
    """
    a = rng.standard_normal((rows, cols))
    if rows < cols:
        a = a.T
    q, r = np.linalg.qr(a)
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)
    return q.T if rows < cols else q
