"""Gradient clipping: torch-like functions on lists of arrays, and the trainer's flat version.

Clipping runs after the pre-clip norms are recorded and before the optimizer step. Norms are
accumulated in float64 (also for float32 gradients, so a large float32 gradient does not
overflow the norm). NaN and Inf are data: they propagate exactly as in torch, without
warnings or exceptions. The scaling is applied without branching on its value, as torch does:
a coefficient clamped to 1 multiplies by exactly 1.0, leaving small gradients bit-for-bit
untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.layout import ParamLayout
from core.spec import (
    AdaptiveClipping,
    ClippingSpec,
    GlobalNormClipping,
    LayerNormClipping,
    NoClipping,
    ValueClipping,
)

__all__ = [
    "BatchedClipper",
    "adaptive_clip_flat",
    "clip_flat",
    "clip_grad_norm_",
    "clip_grad_value_",
]

_NORM_EPS = 1e-6  # torch clip_grad_norm_: coef = max_norm / (total + 1e-6)
_AGC_GRAD_FLOOR = 1e-6  # timm adaptive_clip_grad: grad_norm.clamp(min=1e-6)
# Elements one NumPy call's overhead is worth (~1 us at ~0.25 ns per element): the break-even
# between one call per layer and one vectorised pass over the whole buffer.
_ELEMENTS_PER_CALL = 4096


def _sumsq(x: np.ndarray) -> float:
    """``sum(x**2)`` as a float64 Python float (float32 input is accumulated in float64)."""
    flat = x.reshape(-1)
    if flat.dtype != np.float64:
        flat = flat.astype(np.float64)
    return float(np.dot(flat, flat))


def _clip_coef(max_norm: float, total_norm: float) -> float:
    """``min(max_norm / (total_norm + 1e-6), 1)``, NaN-propagating like ``torch.clamp``."""
    coef = max_norm / (total_norm + _NORM_EPS)
    return coef if coef < 1.0 or math.isnan(coef) else 1.0


def clip_grad_norm_(grads: list[np.ndarray], max_norm: float) -> float:
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: with ``total`` the L2 norm of all elements of all
    arrays, every array is multiplied by ``coef = min(max_norm / (total + 1e-6), 1)``. A NaN
    total gives a NaN coefficient (every gradient becomes NaN); an infinite total gives
    ``coef = 0`` (finite entries become 0, infinite ones NaN), as in torch.

    Parameters
    ----------
    grads : list of ndarray
        Gradients of any shapes; modified in place.
    max_norm : float
        Largest allowed global norm (> 0).

    Returns
    -------
    float
        The global norm **before** clipping (the number to log).
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}; use no clipping instead")
    with np.errstate(all="ignore"):
        total = math.sqrt(sum(_sumsq(g) for g in grads))
        coef = _clip_coef(float(max_norm), total)
        for g in grads:
            g *= coef
    return total


def clip_grad_value_(grads: list[np.ndarray], clip_value: float) -> None:
    """Clamp every element of ``grads`` into ``[-clip_value, clip_value]`` in place.

    As ``torch.nn.utils.clip_grad_value_``: NaN stays NaN, +-Inf become +-clip_value.
    """
    if clip_value <= 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}; use no clipping instead")
    for g in grads:
        np.clip(g, -clip_value, clip_value, out=g)


def clip_flat(
    spec: ClippingSpec,
    grad: np.ndarray,
    params: np.ndarray,
    layout: ParamLayout,
    layer_sumsq: np.ndarray,
) -> tuple[float, bool]:
    """Apply ``spec``'s clipping to the flat gradient in place; the trainer's entry point.

    Parameters
    ----------
    spec : ClippingSpec
        ``none``, ``global_norm`` (:func:`clip_grad_norm_` over all parameters),
        ``value`` (:func:`clip_grad_value_`), ``layer_norm`` (:func:`clip_grad_norm_` over each
        layer's parameters separately) or ``adaptive`` (:func:`adaptive_clip_flat`).
    grad : ndarray of shape ``(n_params,)``
        Flat gradient in ``layout``; modified in place.
    params : ndarray of shape ``(n_params,)``
        Flat parameters (read by ``adaptive`` only).
    layout : ParamLayout
        Where each tensor and layer lives in the flat buffers.
    layer_sumsq : ndarray of shape ``(n_layers,)``
        Per-layer sum of squares of ``grad`` before clipping, in float64
        (``layout.layer_sumsq(grad)``).

    Returns
    -------
    clipped_grad_norm : float
        Global L2 norm of the gradient after clipping (the pre-clip norm when nothing changed).
    clipped : bool
        Whether clipping changed the gradient. A non-finite pre-clip norm under
        ``global_norm``/``layer_norm`` counts as clipped: the gradient is scaled by NaN or 0.
    """
    with np.errstate(all="ignore"):
        total = math.sqrt(float(np.sum(layer_sumsq)))
        if isinstance(spec, NoClipping):
            return total, False
        if isinstance(spec, GlobalNormClipping):
            coef = _clip_coef(spec.max_norm, total)
            np.multiply(grad, coef, out=grad)
            return total * coef, not coef >= 1.0
        if isinstance(spec, LayerNormClipping):
            return _clip_layers(spec.max_norm, grad, layout, layer_sumsq, total)
        if isinstance(spec, ValueClipping):
            return _clip_values(spec.clip_value, grad, total)
        if isinstance(spec, AdaptiveClipping):
            if adaptive_clip_flat(grad, params, layout, spec.clip_factor, spec.eps):
                return math.sqrt(_sumsq(grad)), True
            return total, False
    raise ValueError(f"unknown clipping mode {getattr(spec, 'mode', spec)!r}")


def _clip_layers(max_norm: float, grad: np.ndarray, layout: ParamLayout,
                 layer_sumsq: np.ndarray, total: float) -> tuple[float, bool]:
    """clip_grad_norm_ per layer: ``coef_i = min(max_norm / (norm_i + 1e-6), 1)``."""
    coefs = np.minimum(max_norm / (np.sqrt(layer_sumsq) + _NORM_EPS), 1.0)
    to_scale = np.flatnonzero(~(coefs >= 1.0))  # NaN coefficients scale too, as torch
    if to_scale.size == 0:
        return total, False
    offsets = layout.layer_offsets
    if to_scale.size * _ELEMENTS_PER_CALL > grad.size:
        # many small layers: one pass over the buffer beats a Python loop (x * 1.0 == x)
        np.multiply(grad, np.repeat(coefs, np.diff(offsets)), out=grad)
    else:
        for i in to_scale.tolist():
            segment = grad[int(offsets[i]):int(offsets[i + 1])]
            segment *= coefs[i]
    return math.sqrt(float(np.dot(layer_sumsq, coefs * coefs))), True


def _clip_values(clip_value: float, grad: np.ndarray, total: float) -> tuple[float, bool]:
    """clip_grad_value_ on the flat gradient; nothing is written when no element exceeds the bound."""
    # fmax/fmin skip NaN (which clipping leaves alone anyway); max() would return NaN
    if grad.size == 0 or not (np.fmax.reduce(grad) > clip_value
                              or np.fmin.reduce(grad) < -clip_value):
        return total, False
    np.clip(grad, -clip_value, clip_value, out=grad)
    return math.sqrt(_sumsq(grad)), True


# --------------------------------------------------------------------------------------------
# Adaptive (unit-wise) gradient clipping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _UnitIndex:
    """Which AGC unit each flat element belongs to.

    Unit = one column of a weight matrix (one output unit: the matrix is ``(fan_in, fan_out)``)
    or one whole 1-D tensor (bias, bn_gamma, bn_beta).
    """

    unit_of: np.ndarray  # intp, shape (n_params,)
    n_units: int


_UNIT_INDEX_CACHE: dict[int, tuple[ParamLayout, _UnitIndex]] = {}
_UNIT_INDEX_CACHE_SIZE = 4


def _unit_index(layout: ParamLayout) -> _UnitIndex:
    """The layout's unit index, built once per layout object (small identity cache).

    The cache holds the layout itself, so its ``id`` cannot be reused while cached.
    """
    hit = _UNIT_INDEX_CACHE.get(id(layout))
    if hit is not None and hit[0] is layout:
        return hit[1]
    unit_of = np.empty(layout.size, dtype=np.intp)
    n_units = 0
    for slot in layout.slots:
        if len(slot.shape) == 2:
            fan_in, fan_out = slot.shape
            unit_of[slot.offset:slot.stop] = np.tile(np.arange(n_units, n_units + fan_out), fan_in)
            n_units += fan_out
        else:
            unit_of[slot.offset:slot.stop] = n_units
            n_units += 1
    index = _UnitIndex(unit_of, n_units)
    if len(_UNIT_INDEX_CACHE) >= _UNIT_INDEX_CACHE_SIZE:
        _UNIT_INDEX_CACHE.pop(next(iter(_UNIT_INDEX_CACHE)))
    _UNIT_INDEX_CACHE[id(layout)] = (layout, index)
    return index


def adaptive_clip_flat(grad: np.ndarray, params: np.ndarray, layout: ParamLayout,
                       clip_factor: float, eps: float = 1e-3) -> bool:
    """Unit-wise adaptive gradient clipping (AGC, Brock et al. 2021) of the flat gradient.

    As timm's ``adaptive_clip_grad`` applied to every parameter tensor. For each unit ``u``
    (a column of a ``(fan_in, fan_out)`` weight matrix, i.e. one output unit; or a whole 1-D
    tensor), with ``||.||`` the L2 norm over the unit::

        max_norm_u = max(||p_u||, eps) * clip_factor
        g_u = g_u                                          if ||g_u|| < max_norm_u
        g_u = g_u * max_norm_u / max(||g_u||, 1e-6)        otherwise (NaN norms included)

    All units of the whole network are handled in a few vectorised calls (``bincount`` over a
    cached unit index), whatever the depth.

    Returns
    -------
    bool
        Whether any unit was scaled (``grad`` is left untouched otherwise).
    """
    index = _unit_index(layout)
    with np.errstate(all="ignore"):
        squares = np.square(grad, dtype=np.float64)
        grad_norm = np.sqrt(np.bincount(index.unit_of, weights=squares, minlength=index.n_units))
        np.square(params, out=squares, dtype=np.float64)
        param_norm = np.sqrt(np.bincount(index.unit_of, weights=squares, minlength=index.n_units))
        max_norm = np.maximum(param_norm, eps) * clip_factor
        scale = np.where(grad_norm < max_norm, 1.0,
                         max_norm / np.maximum(grad_norm, _AGC_GRAD_FLOOR))
        if not np.any(scale != 1.0):
            return False
        np.take(scale, index.unit_of, out=squares)
        np.multiply(grad, squares, out=grad)
    return True


# --------------------------------------------------------------------------------------------
# Stacked variant (core.batched): K networks' flat gradients as rows of a (K, n_params) array
# --------------------------------------------------------------------------------------------


class BatchedClipper:
    """:func:`clip_flat` for a stack of networks that share a clipping mode, each with its own
    threshold (``max_norm`` / ``clip_value`` / ``clip_factor`` and ``eps``).

    Every member's gradient is clipped exactly as :func:`clip_flat` clips it alone (same
    coefficients, same operations); only the post-clip norm may differ in the last bit.
    """

    def __init__(self, specs: list[ClippingSpec]) -> None:
        modes = {s.mode for s in specs}
        if len(modes) != 1:
            raise ValueError(f"a stack shares one clipping mode, got {sorted(modes)}")
        self.mode = specs[0].mode
        self.threshold = np.asarray([_field(s, "max_norm", "clip_value", "clip_factor")
                                     for s in specs], dtype=np.float64)
        self.eps = np.asarray([_field(s, "eps") for s in specs], dtype=np.float64)

    def keep_rows(self, rows: np.ndarray) -> None:
        """Keep only the members ``rows`` (in that order)."""
        self.threshold, self.eps = self.threshold[rows], self.eps[rows]

    def __call__(self, grad: np.ndarray, params: np.ndarray, layout: ParamLayout,
                 layer_sumsq: np.ndarray, total: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``grad`` ``(K, n_params)`` in place given ``layer_sumsq`` ``(K, n_layers)``
        (and ``total``, ``sqrt(layer_sumsq.sum(axis=1))``, when the caller has it);
        returns ``(clipped_grad_norm (K,), clipped (K,) bool)`` as :func:`clip_flat` does."""
        if total is None:
            with np.errstate(all="ignore"):
                total = np.sqrt(layer_sumsq.sum(axis=1))
        if self.mode == "none":
            return total, np.zeros(len(total), dtype=bool)
        with np.errstate(all="ignore"):
            if self.mode == "global_norm":
                coef = self.threshold / (total + _NORM_EPS)
                coef = np.where((coef < 1.0) | np.isnan(coef), coef, 1.0)
                np.multiply(grad, coef.astype(grad.dtype)[:, None], out=grad)
                return total * coef, ~(coef >= 1.0)
            if self.mode == "layer_norm":
                coefs = np.minimum(self.threshold[:, None] / (np.sqrt(layer_sumsq) + _NORM_EPS),
                                   1.0)
                clipped = ~(coefs >= 1.0).all(axis=1)
                if clipped.any():
                    offsets = layout.layer_offsets
                    for i in range(layout.n_layers):  # float64 coefficients, as clip_flat
                        grad[:, int(offsets[i]):int(offsets[i + 1])] *= coefs[:, i:i + 1]
                norm = np.where(clipped, np.sqrt((layer_sumsq * coefs * coefs).sum(axis=1)),
                                total)
                return norm, clipped
            if self.mode == "value":
                cv = self.threshold[:, None]
                clipped = (np.fmax.reduce(grad, axis=1) > cv[:, 0]) | (
                    np.fmin.reduce(grad, axis=1) < -cv[:, 0])
                if clipped.any():
                    rows = np.flatnonzero(clipped)
                    bound = cv[rows].astype(grad.dtype)
                    grad[rows] = np.clip(grad[rows], -bound, bound)
                return np.where(clipped, _row_norms(grad), total), clipped
            if self.mode == "adaptive":
                clipped = self._adaptive(grad, params, layout)
                return np.where(clipped, _row_norms(grad), total), clipped
        raise ValueError(f"unknown clipping mode {self.mode!r}")

    def _adaptive(self, grad: np.ndarray, params: np.ndarray,
                  layout: ParamLayout) -> np.ndarray:
        """:func:`adaptive_clip_flat` per row: one ``bincount`` over all members' units."""
        index = _unit_index(layout)
        K, n_units = grad.shape[0], index.n_units
        unit_of = (index.unit_of[None, :] + n_units * np.arange(K)[:, None]).reshape(-1)
        squares = np.square(grad, dtype=np.float64).reshape(-1)
        grad_norm = np.sqrt(np.bincount(unit_of, weights=squares, minlength=K * n_units))
        np.square(params.reshape(-1), out=squares, dtype=np.float64)
        param_norm = np.sqrt(np.bincount(unit_of, weights=squares, minlength=K * n_units))
        max_norm = (np.maximum(param_norm.reshape(K, n_units), self.eps[:, None])
                    * self.threshold[:, None])
        grad_norm = grad_norm.reshape(K, n_units)
        scale = np.where(grad_norm < max_norm, 1.0,
                         max_norm / np.maximum(grad_norm, _AGC_GRAD_FLOOR))
        clipped: np.ndarray = np.any(scale != 1.0, axis=1)
        if clipped.any():
            np.take(scale.reshape(-1), unit_of, out=squares)
            np.multiply(grad, squares.reshape(grad.shape), out=grad)
        return clipped


def _field(spec: ClippingSpec, *names: str) -> float:
    """The first of the fields ``names`` that ``spec`` has (0.0 if none): looked up in the
    model's fields, not by a failing attribute access (slow on a pydantic model)."""
    fields = type(spec).model_fields
    for name in names:
        if name in fields:
            return float(getattr(spec, name))
    return 0.0


def _row_norms(grad: np.ndarray) -> np.ndarray:
    """L2 norm of each row, accumulated in float64."""
    g = grad if grad.dtype == np.float64 else grad.astype(np.float64)
    return np.sqrt(np.einsum("kp,kp->k", g, g))
