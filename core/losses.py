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

__all__ = ["LOSSES", "accuracy", "binary_cross_entropy", "cross_entropy", "get_loss", "mse"]

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
