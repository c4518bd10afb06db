"""Layer operations as pure forward/backward pairs (cs231n style, with named caches).

Shapes: ``x`` is ``(batch, fan_in)``, ``W`` is ``(fan_in, fan_out)`` used as ``x @ W + b``,
``b``/``gamma``/``beta`` are ``(fan_out,)``. Backward functions write parameter gradients
into caller-provided arrays (views into the network's flat gradient buffer) and return the
gradient with respect to the layer input. Overflow is silent only under ``np.errstate``, which
the trainer sets once per run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "BatchNormCache",
    "affine_backward",
    "affine_backward_batched",
    "affine_forward",
    "batchnorm_backward",
    "batchnorm_backward_batched",
    "batchnorm_forward_eval",
    "batchnorm_forward_train",
    "batchnorm_forward_train_batched",
]

Array = np.ndarray
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def affine_forward(x: Array, W: Array, b: Array, out: Array | None = None) -> Array:
    """``x @ W + b``: ``(batch, fan_in) -> (batch, fan_out)``."""
    z = np.matmul(x, W, out=out)
    z += b
    return z


def affine_backward(dz: Array, x: Array, W: Array, dW: Array, db: Array,
                    need_dx: bool = True, dx_out: Array | None = None) -> Array | None:
    """Gradients of ``z = x @ W + b``.

    Writes ``dW = x.T @ dz`` (``(fan_in, fan_out)``) and ``db = sum(dz, axis=0)`` into the
    given arrays; returns ``dx = dz @ W.T`` (``(batch, fan_in)``) or None if not needed.
    """
    np.matmul(x.T, dz, out=dW)
    np.add.reduce(dz, axis=0, out=db)
    return np.matmul(dz, W.T, out=dx_out) if need_dx else None


@dataclass(slots=True)
class BatchNormCache:
    """What batch-norm backward needs: normalised input and inverse std per unit."""

    x_hat: Array  # (batch, units)
    inv_std: Array  # (units,)


def batchnorm_forward_train(
    z: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array,
    update_running: bool = True,
) -> tuple[Array, BatchNormCache]:
    """Batch normalisation with batch statistics (biased variance, eps 1e-5).

    Running statistics are updated in place with momentum 0.1 using the unbiased batch
    variance, as ``torch.nn.BatchNorm1d`` does. Returns ``(gamma * x_hat + beta, cache)``.
    """
    n = z.shape[0]
    mean = z.mean(axis=0)
    centered = z - mean
    var = np.mean(centered * centered, axis=0)
    inv_std = 1.0 / np.sqrt(var + BN_EPS)
    x_hat = centered
    x_hat *= inv_std
    y = x_hat * gamma
    y += beta
    if update_running:
        running_mean *= 1 - BN_MOMENTUM
        running_mean += BN_MOMENTUM * mean
        if n > 1:
            running_var *= 1 - BN_MOMENTUM
            running_var += (BN_MOMENTUM * n / (n - 1)) * var
    return y, BatchNormCache(x_hat, inv_std)


def batchnorm_forward_eval(z: Array, gamma: Array, beta: Array, running_mean: Array,
                           running_var: Array) -> Array:
    """Batch normalisation with the running statistics (inference)."""
    with np.errstate(over="ignore", invalid="ignore"):
        scale = gamma / np.sqrt(running_var + BN_EPS)
        return (z - running_mean) * scale + beta


def batchnorm_backward(dy: Array, gamma: Array, cache: BatchNormCache, dgamma: Array,
                       dbeta: Array) -> Array:
    """Gradients of batch norm (training mode).

    Writes ``dgamma = sum(dy * x_hat)`` and ``dbeta = sum(dy)``; returns
    ``dz = inv_std / n * (n * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))`` with
    ``dx_hat = dy * gamma``.
    """
    np.sum(dy * cache.x_hat, axis=0, out=dgamma)
    np.sum(dy, axis=0, out=dbeta)
    dx_hat = dy * gamma
    dz = dx_hat - dx_hat.mean(axis=0)
    dz -= cache.x_hat * np.mean(dx_hat * cache.x_hat, axis=0)
    dz *= cache.inv_std
    return dz


# --------------------------------------------------------------------------------------------
# Stacked variants (core.batched): K independent networks at once. Arrays gain a leading
# member axis: ``x`` is ``(K, batch, fan_in)`` (or a shared ``(batch, fan_in)``), ``W`` is
# ``(K, fan_in, fan_out)``, per-unit vectors are ``(K, 1, units)``. ``affine_forward`` and
# ``batchnorm_forward_eval`` broadcast as they are. Each member's numbers are computed with the
# same operations, in the same order, as the single-network functions above (NumPy's batched
# matmul calls the same BLAS routine per member), so a member's results equal its own run.
# --------------------------------------------------------------------------------------------


def affine_backward_batched(dz: Array, x: Array, W: Array, dW: Array, db: Array,
                            need_dx: bool = True, dx_out: Array | None = None) -> Array | None:
    """Stacked :func:`affine_backward`: ``dz`` ``(K, batch, fan_out)``, ``x`` ``(K, batch,
    fan_in)`` or shared ``(batch, fan_in)``; writes ``dW`` ``(K, fan_in, fan_out)`` and ``db``
    ``(K, 1, fan_out)``; returns ``dx`` ``(K, batch, fan_in)`` or None."""
    np.matmul(np.swapaxes(x, -1, -2), dz, out=dW)
    np.add.reduce(dz, axis=1, out=db[:, 0, :])
    return np.matmul(dz, np.swapaxes(W, -1, -2), out=dx_out) if need_dx else None


def batchnorm_forward_train_batched(
    z: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array,
    update_running: bool = True,
) -> tuple[Array, BatchNormCache]:
    """Stacked :func:`batchnorm_forward_train`: ``z`` ``(K, batch, units)``; ``gamma``,
    ``beta``, ``running_mean``, ``running_var`` ``(K, 1, units)`` (running stats in place)."""
    n = z.shape[1]
    mean = z.mean(axis=1, keepdims=True)
    centered = z - mean
    var = np.mean(centered * centered, axis=1, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + BN_EPS)
    x_hat = centered
    x_hat *= inv_std
    y = x_hat * gamma
    y += beta
    if update_running:
        running_mean *= 1 - BN_MOMENTUM
        running_mean += BN_MOMENTUM * mean
        if n > 1:
            running_var *= 1 - BN_MOMENTUM
            running_var += (BN_MOMENTUM * n / (n - 1)) * var
    return y, BatchNormCache(x_hat, inv_std)


def batchnorm_backward_batched(dy: Array, gamma: Array, cache: BatchNormCache, dgamma: Array,
                               dbeta: Array) -> Array:
    """Stacked :func:`batchnorm_backward`: ``dy`` ``(K, batch, units)``; ``gamma``,
    ``dgamma``, ``dbeta`` ``(K, 1, units)``."""
    np.sum(dy * cache.x_hat, axis=1, out=dgamma[:, 0, :])
    np.sum(dy, axis=1, out=dbeta[:, 0, :])
    dx_hat = dy * gamma
    dz = dx_hat - dx_hat.mean(axis=1, keepdims=True)
    dz -= cache.x_hat * np.mean(dx_hat * cache.x_hat, axis=1, keepdims=True)
    dz *= cache.inv_std
    return dz
