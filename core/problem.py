"""The learning problem a spec defines: seeded data, the network and the loss.

Both the training loop (:class:`core.trainer.Trainer`) and the preflight probe
(:mod:`core.diagnostics.preflight`) build on it, so the probe measures exactly the network
and first batch the trainer would start from, without depending on the training loop.
"""

from __future__ import annotations

import numpy as np

from core.data import Dataset, load_dataset
from core.losses import accuracy, get_loss
from core.network import MLP
from core.spec import TrainingSpec

__all__ = ["Problem"]

Array = np.ndarray


class Problem:
    """Data, network and loss of a :class:`~core.spec.TrainingSpec`.

    Everything random (data, then initialisation) comes from one ``numpy.random.Generator``
    seeded with ``spec.seed`` (``self.rng``), which the trainer keeps using for shuffling.
    """

    def __init__(self, spec: TrainingSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.data: Dataset = load_dataset(spec, self.rng)
        self.network = MLP(spec, self.rng)
        self.loss_name = spec.loss or "mse"
        self._loss_fn = get_loss(self.loss_name)

    def parameters(self) -> list[tuple[str, Array]]:
        """``[(name, array)]`` in layer order; the arrays are the live parameters."""
        return self.network.parameters()

    def gradients(self, X: Array, y: Array) -> tuple[float, list[Array]]:
        """Loss and gradients (aligned with :meth:`parameters`) on ``(X, y)``, training mode.

        No parameter (and no batch-norm running statistic) changes.
        """
        X = np.ascontiguousarray(X, dtype=self.network.dtype)
        with np.errstate(all="ignore"):
            out = self.network.forward(X, update_running=False)
            loss, dout = self._loss_fn(out, self._targets(np.asarray(y)))
            self.network.backward(dout)
        return loss, [g.copy() for g in self.network.gradient_views()]

    def _targets(self, y: Array) -> Array:
        """Targets in the form the loss wants."""
        dtype = self.network.dtype
        if self.loss_name == "cross_entropy":
            return y.astype(np.int64, copy=False)
        if self.loss_name == "binary_cross_entropy":
            return y.reshape(len(y), 1).astype(dtype)
        if self.data.task == "classification":  # mse on class labels: one-hot targets
            onehot = np.zeros((len(y), self.network.sizes[-1]), dtype=dtype)
            onehot[np.arange(len(y)), y.astype(np.int64)] = 1
            return onehot
        return y.reshape(len(y), self.network.sizes[-1]).astype(dtype, copy=False)

    def _accuracy(self, out: Array, y: Array) -> float | None:
        if self.loss_name == "mse" and self.data.task == "classification":
            return float(np.mean(out.argmax(axis=1) == y.argmax(axis=1)))
        return accuracy(out, y, self.loss_name)

    def evaluate(self, X: Array, y: Array) -> tuple[float, float | None]:
        """Inference-mode loss and accuracy on already prepared targets."""
        with np.errstate(all="ignore"):
            out = self.network.predict(X)
            loss, _ = self._loss_fn(out, y)
            return loss, self._accuracy(out, y)
