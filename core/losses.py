"""Losses on the (linear) output layer: value and gradient with respect to the outputs.

Definitions match PyTorch's defaults (``reduction="mean"``):

- ``mse``: mean over all elements of ``(pred - y)**2``.
- ``cross_entropy``: mean over the batch of ``-log softmax(logits)[label]`` (integer labels),
  computed with a max-shifted log-sum-exp so large logits do not overflow.
- ``binary_cross_entropy``: BCE with logits, mean: ``max(x, 0) - x*y + log1p(exp(-|x|))``.

Each loss is a pure function ``(outputs, targets) -> (loss, d_outputs)``. Non-finite outputs
give a non-finite loss and gradient: an outcome to diagnose, not an error (the trainer runs
under ``np.errstate(all="ignore")`` so that this is silent).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "BATCHED_LOSSES",
    "LOSSES",
    "accuracy",
    "accuracy_batched",
    "binary_cross_entropy",
    "binary_cross_entropy_batched",
    "cross_entropy",
    "cross_entropy_batched",
    "get_loss",
    "loss_targets",
    "mse",
    "mse_batched",
]

Array = np.ndarray
LossFn = Callable[[Array, Array], tuple[float, Array]]


def mse(pred: Array, y: Array) -> tuple[float, Array]:
    """Mean squared error.

    Parameters
    ----------
    pred, y : ndarray of shape ``(n, k)``

    Returns
    -------
    loss : float
        ``mean((pred - y)**2)`` over all ``n*k`` elements.
    dpred : ndarray of shape ``(n, k)``
        ``2 * (pred - y) / (n*k)``.
    """
    diff = pred - y
    sq = float(np.dot(diff.reshape(-1), diff.reshape(-1)))
    if not np.isfinite(sq) and diff.dtype != np.float64:  # float32 overflow of the squares
        sq = float(np.square(diff, dtype=np.float64).sum())
    loss = sq / diff.size
    diff *= 2.0 / diff.size
    return loss, diff


def cross_entropy(logits: Array, labels: Array) -> tuple[float, Array]:
    """Softmax cross-entropy with integer labels.

    Parameters
    ----------
    logits : ndarray of shape ``(n, K)``
    labels : int ndarray of shape ``(n,)``, values in ``0..K-1``

    Returns
    -------
    loss : float
        ``mean_i(logsumexp(logits_i) - logits_i[labels_i])``.
    dlogits : ndarray of shape ``(n, K)``
        ``(softmax(logits) - onehot(labels)) / n``.
    """
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs_true = shifted[rows, labels] - np.log(sum_exp[:, 0])
    loss = float(-np.mean(log_probs_true, dtype=np.float64))
    exp /= sum_exp
    exp[rows, labels] -= 1
    exp /= n
    return loss, exp


def binary_cross_entropy(logits: Array, y: Array) -> tuple[float, Array]:
    """Binary cross-entropy with logits (``torch.nn.BCEWithLogitsLoss``).

    Parameters
    ----------
    logits, y : ndarray of shape ``(n, 1)``; ``y`` in ``{0, 1}`` (or probabilities).

    Returns
    -------
    loss : float
        ``mean(max(x, 0) - x*y + log1p(exp(-|x|)))``.
    dlogits : ndarray of shape ``(n, 1)``
        ``(sigmoid(x) - y) / n``.
    """
    e = np.exp(-np.abs(logits))
    per = np.maximum(logits, 0) - logits * y + np.log1p(e)
    loss = float(np.mean(per, dtype=np.float64))
    sig = np.where(logits >= 0, 1, e) / (1 + e)
    grad = (sig - y) / logits.size
    return loss, grad.astype(logits.dtype, copy=False)


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
}


def get_loss(name: str) -> LossFn:
    """The loss called ``name``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


def accuracy(outputs: Array, targets: Array, loss: str) -> float | None:
    """Fraction of correct predictions (None for regression/mse)."""
    if loss == "cross_entropy":
        return float(np.mean(outputs.argmax(axis=1) == targets))
    if loss == "binary_cross_entropy":
        return float(np.mean((outputs[:, 0] > 0) == (targets[:, 0] > 0.5)))
    return None


# --------------------------------------------------------------------------------------------
# Stacked variants (core.batched): outputs of K networks, ``(K, n, k)``; targets shared
# ``(n, ...)`` or per member ``(K, n, ...)``. Each returns ``(losses (K,) float64, d_outputs)``
# with every member's numbers computed as the single-network function above computes them.
# --------------------------------------------------------------------------------------------

BatchedLossFn = Callable[[Array, Array], tuple[Array, Array]]


def mse_batched(pred: Array, y: Array) -> tuple[Array, Array]:
    """Stacked :func:`mse`."""
    diff = pred - y
    K = diff.shape[0]
    rows = diff.reshape(K, 1, -1)
    sq = np.matmul(rows, rows.transpose(0, 2, 1)).reshape(K).astype(np.float64)
    if diff.dtype != np.float64 and not np.isfinite(sq).all():  # float32 overflow of squares
        bad = ~np.isfinite(sq)
        sq[bad] = np.square(diff[bad], dtype=np.float64).reshape(int(bad.sum()), -1).sum(axis=1)
    size = diff[0].size
    diff *= 2.0 / size
    return sq / size, diff


def cross_entropy_batched(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Stacked :func:`cross_entropy`: ``labels`` int ``(n,)`` shared or ``(K, n)``."""
    K, n = logits.shape[0], logits.shape[1]
    idx = np.broadcast_to(labels, (K, n))[:, :, None]
    shifted = logits - logits.max(axis=2, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=2, keepdims=True)
    log_probs_true = np.take_along_axis(shifted, idx, axis=2)[:, :, 0] - np.log(sum_exp[:, :, 0])
    loss = np.asarray(-np.mean(log_probs_true, axis=1, dtype=np.float64))
    exp /= sum_exp
    np.put_along_axis(exp, idx, np.take_along_axis(exp, idx, axis=2) - 1, axis=2)
    exp /= n
    return loss, exp


def binary_cross_entropy_batched(logits: Array, y: Array) -> tuple[Array, Array]:
    """Stacked :func:`binary_cross_entropy`."""
    # the single function's operations, in place where a temporary can be reused
    e = np.abs(logits)
    np.negative(e, out=e)
    np.exp(e, out=e)
    per = np.maximum(logits, 0)
    tmp = logits * y
    per -= tmp
    per += np.log1p(e, out=tmp)
    K = logits.shape[0]
    count = per[0].size
    # np.mean's own steps: a float64 sum, divided by the count
    loss = np.add.reduce(per.reshape(K, count), axis=1, dtype=np.float64)
    loss /= count
    sig = np.where(logits >= 0, 1, e)
    sig /= np.add(e, 1, out=tmp)
    sig -= y
    sig /= logits[0].size
    return loss, sig.astype(logits.dtype, copy=False)


BATCHED_LOSSES: dict[str, BatchedLossFn] = {
    "mse": mse_batched,
    "cross_entropy": cross_entropy_batched,
    "binary_cross_entropy": binary_cross_entropy_batched,
}


def accuracy_batched(outputs: Array, targets: Array, loss: str) -> Array | None:
    """Stacked :func:`accuracy`: ``(K,)`` fractions (None for regression/mse)."""
    if loss == "cross_entropy":
        return np.mean(outputs.argmax(axis=2) == targets, axis=1)
    if loss == "binary_cross_entropy":
        # the exact count over the same divisor: np.mean's numbers, without its overhead
        hits = np.add.reduce(np.equal(outputs[..., 0] > 0, targets[..., 0] > 0.5), axis=-1,
                             dtype=np.intp)
        return hits / outputs.shape[1]
    return None


def loss_targets(y: Array, loss: str, task: str, n_outputs: int, dtype: np.dtype) -> Array:
    """Targets ``y`` (labels or values, ``(n,)`` / ``(n, k)``) in the form ``loss`` wants:
    int64 labels for ``cross_entropy``, ``(n, 1)`` floats for ``binary_cross_entropy``,
    one-hot rows for ``mse`` on class labels, ``(n, n_outputs)`` floats for regression."""
    if loss == "cross_entropy":
        return y.astype(np.int64, copy=False)
    if loss == "binary_cross_entropy":
        return y.reshape(len(y), 1).astype(dtype)
    if task == "classification":
        onehot = np.zeros((len(y), n_outputs), dtype=dtype)
        onehot[np.arange(len(y)), y.astype(np.int64)] = 1
        return onehot
    return y.reshape(len(y), n_outputs).astype(dtype, copy=False)
