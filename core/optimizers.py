"""Optimizers over the network's single flat parameter buffer (torch.optim semantics).

The base class :class:`Optimizer` owns the flat parameter array and the step loop; each
subclass implements only its update rule, :meth:`Optimizer._update`, which writes the change
of the parameters into ``delta``. Every rule works on the whole network at once: a step is a
handful of in-place NumPy calls on preallocated buffers, whatever the depth.

The formulas and their order follow ``torch.optim`` (single-tensor path, torch 2.x), so a
float64 run matches torch to rounding. The learning rate is an argument of every step (the
schedule decides it), not state. NaN and Inf propagate as data: no warnings, no exceptions.

The base class and the row groups a large stack is updated in are
:mod:`core.optimizer_base`; ``_update`` works on one group's rows (the whole buffer but for a
large stack): ``grad``, ``lr`` and ``delta`` arrive sliced, state is ``self._x[rows]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.optimizer_base import Optimizer, lerp_
from core.spec import SGD as SGDSpec
from core.spec import Adagrad as AdagradSpec
from core.spec import Adam as AdamSpec
from core.spec import AdamW as AdamWSpec
from core.spec import OptimizerSpec
from core.spec import RMSprop as RMSpropSpec

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "make_optimizer"]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (torch.optim.SGD, dampening 0).

    Polyak (1964) heavy-ball momentum, Nesterov (1983) as in Sutskever et al. (2013)::

        g = grad + weight_decay * p
        b = g                       (first step)      b = momentum * b + g   (later)
        d = g + momentum * b        (nesterov)        d = b                  (otherwise)
        p = p - lr * d
    """

    def __init__(self, params: np.ndarray, *, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires momentum > 0")
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self._buf = np.zeros_like(params) if momentum != 0 else None

    def _update(self, rows: slice, grad: np.ndarray, lr: Any, delta: np.ndarray) -> None:
        self._add_weight_decay(rows, grad, self.weight_decay, delta)
        direction = grad
        if self._buf is not None:
            buf = self._buf[rows]
            if self.steps == 1:
                np.copyto(buf, grad)
            else:
                buf *= self.momentum
                buf += grad
            if self.nesterov:
                np.multiply(buf, self.momentum, out=delta)
                grad += delta
            else:
                direction = buf
        np.multiply(direction, self._scalar(-lr), out=delta)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization"), as torch.optim.Adam.

    With ``t`` the step number (from 1)::

        g = grad + weight_decay * p                  (L2; not with decoupled decay)
        m = lerp(m, g, 1 - beta1)                    v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``eps`` is added outside the square root, after the bias correction, as torch does.
    """

    decoupled = False

    def __init__(self, params: np.ndarray, *, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params)
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay
        self._m = np.zeros_like(params)
        self._v = np.zeros_like(params)

    def _update(self, rows: slice, grad: np.ndarray, lr: Any, delta: np.ndarray) -> None:
        m, v, tmp = self._m[rows], self._v[rows], self._work(delta)
        if not self.decoupled:
            self._add_weight_decay(rows, grad, self.weight_decay, tmp)
        lerp_(m, grad, 1 - self.beta1, tmp)
        v *= self.beta2
        np.multiply(grad, 1 - self.beta2, out=tmp)
        tmp *= grad
        v += tmp
        t = self.steps
        step_size = lr / (1 - self.beta1**t)
        bias_correction2_sqrt = (1 - self.beta2**t) ** 0.5
        denom = np.sqrt(v, out=tmp)
        denom /= bias_correction2_sqrt
        denom += self.eps
        np.divide(m, denom, out=delta)
        delta *= self._scalar(-step_size)
        if self.decoupled and self.weight_decay != 0:
            # torch applies p *= 1 - lr * wd before the Adam step; the same change, as a delta
            np.multiply(self.params[rows], self._scalar(lr * self.weight_decay), out=tmp)
            delta -= tmp


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization").

    As torch.optim.AdamW: ``p = p * (1 - lr * weight_decay)``, then the :class:`Adam` step
    on the undecayed gradient. Default ``weight_decay`` 0.01.
    """

    decoupled = True

    def __init__(self, params: np.ndarray, *, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(params, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop (Hinton 2012, Neural Networks for ML lecture 6e), as torch.optim.RMSprop.

    ::

        g = grad + weight_decay * p
        s = alpha * s + (1 - alpha) * g * g
        a = lerp(a, g, 1 - alpha);  r = sqrt(s - a * a) + eps     (centered, Graves 2013)
                                    r = sqrt(s) + eps             (otherwise)
        b = momentum * b + g / r;   p = p - lr * b                (momentum > 0)
                                    p = p - lr * g / r            (otherwise)
    """

    def __init__(self, params: np.ndarray, *, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params)
        self.alpha = alpha
        self.eps = eps
        self.momentum = momentum
        self.centered = centered
        self.weight_decay = weight_decay
        self._square_avg = np.zeros_like(params)
        self._grad_avg = np.zeros_like(params) if centered else None
        self._buf = np.zeros_like(params) if momentum > 0 else None

    def _update(self, rows: slice, grad: np.ndarray, lr: Any, delta: np.ndarray) -> None:
        s, tmp = self._square_avg[rows], self._work(delta)
        self._add_weight_decay(rows, grad, self.weight_decay, tmp)
        s *= self.alpha
        np.multiply(grad, 1 - self.alpha, out=tmp)
        tmp *= grad
        s += tmp
        if self._grad_avg is not None:
            grad_avg = self._grad_avg[rows]
            lerp_(grad_avg, grad, 1 - self.alpha, tmp)
            np.multiply(grad_avg, grad_avg, out=tmp)
            np.subtract(s, tmp, out=tmp)
            avg = np.sqrt(tmp, out=tmp)
        else:
            avg = np.sqrt(s, out=tmp)
        avg += self.eps
        if self._buf is not None:
            buf = self._buf[rows]
            buf *= self.momentum
            np.divide(grad, avg, out=tmp)
            buf += tmp
            np.multiply(buf, self._scalar(-lr), out=delta)
        else:
            np.divide(grad, avg, out=delta)
            delta *= self._scalar(-lr)


class Adagrad(Optimizer):
    """Adagrad (Duchi, Hazan & Singer 2011), as torch.optim.Adagrad.

    With ``t`` the step number (from 1)::

        g = grad + weight_decay * p
        s = s + g * g                                  (s starts at initial_accumulator_value)
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)
    """

    def __init__(self, params: np.ndarray, *, lr_decay: float = 0.0, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params)
        self.lr_decay = lr_decay
        self.eps = eps
        self.weight_decay = weight_decay
        self._sum = np.full_like(params, initial_accumulator_value)

    def _update(self, rows: slice, grad: np.ndarray, lr: Any, delta: np.ndarray) -> None:
        s, tmp = self._sum[rows], self._work(delta)
        self._add_weight_decay(rows, grad, self.weight_decay, tmp)
        clr = lr / (1 + (self.steps - 1) * self.lr_decay)
        np.multiply(grad, grad, out=tmp)
        s += tmp
        std = np.sqrt(s, out=tmp)
        std += self.eps
        np.divide(grad, std, out=delta)
        delta *= self._scalar(-clr)


def make_optimizer(spec: OptimizerSpec, params: np.ndarray) -> Optimizer:
    """The optimizer described by ``spec``, updating the flat buffer ``params`` in place.

    ``spec.lr`` is not used here: the learning rate of each step is passed to
    :meth:`Optimizer.step` (see :mod:`core.schedules`).
    """
    if isinstance(spec, SGDSpec):
        return SGD(params, momentum=spec.momentum, nesterov=spec.nesterov,
                   weight_decay=spec.weight_decay)
    if isinstance(spec, AdamWSpec):
        return AdamW(params, beta1=spec.beta1, beta2=spec.beta2, eps=spec.eps,
                     weight_decay=spec.weight_decay)
    if isinstance(spec, AdamSpec):
        return Adam(params, beta1=spec.beta1, beta2=spec.beta2, eps=spec.eps,
                    weight_decay=spec.weight_decay)
    if isinstance(spec, RMSpropSpec):
        return RMSprop(params, alpha=spec.alpha, eps=spec.eps, momentum=spec.momentum,
                       centered=spec.centered, weight_decay=spec.weight_decay)
    if isinstance(spec, AdagradSpec):
        return Adagrad(params, lr_decay=spec.lr_decay, eps=spec.eps,
                       initial_accumulator_value=spec.initial_accumulator_value,
                       weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {getattr(spec, 'name', spec)!r}")
