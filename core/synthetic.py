"""Synthetic data sets: seeded generators of the named toy problems a spec can ask for.

:func:`make_synthetic` turns a ``synthetic`` data spec into unshuffled float64 inputs and
targets (spirals, moons, circles, blobs and xor for classification; linear and sine for
regression), with its input and target scales applied; every draw comes from the caller's
generator. Shuffling, splitting and standardising are :func:`core.data.load_dataset`'s, which
re-exports :func:`make_synthetic`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from core.spec import SYNTHETIC_DATASETS, SyntheticData

__all__ = ["make_synthetic"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------------------------
# Synthetic generators: float64 X of shape (n, d); int64 labels (n,) or float64 targets (n, 1)
# --------------------------------------------------------------------------------------------


def _balanced_labels(n: int, n_classes: int) -> IntArray:
    """Labels 0..K-1 in blocks whose sizes differ by at most one (the first n % K get one more)."""
    counts = [n // n_classes + (1 if k < n % n_classes else 0) for k in range(n_classes)]
    return np.repeat(np.arange(n_classes, dtype=np.int64), counts)


def _spirals(n: int, n_classes: int, noise: float,
             rng: np.random.Generator) -> tuple[FloatArray, IntArray]:
    """cs231n's spirals: arm k has radius 0..1 and angle 4k..4(k+1) plus N(0, noise^2)."""
    y = _balanced_labels(n, n_classes)
    X = np.empty((n, 2))
    for k in range(n_classes):
        idx = np.flatnonzero(y == k)
        r = np.linspace(0.0, 1.0, idx.size)
        t = np.linspace(4.0 * k, 4.0 * (k + 1), idx.size) + noise * rng.standard_normal(idx.size)
        X[idx, 0] = r * np.sin(t)
        X[idx, 1] = r * np.cos(t)
    return X, y


def _moons(n: int, noise: float, rng: np.random.Generator) -> tuple[FloatArray, IntArray]:
    """sklearn.datasets.make_moons: two interleaving half circles + N(0, noise^2)."""
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    X = np.vstack([
        np.column_stack([np.cos(t_out), np.sin(t_out)]),
        np.column_stack([1.0 - np.cos(t_in), 1.0 - np.sin(t_in) - 0.5]),
    ])
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    return X + noise * rng.standard_normal(X.shape), y


def _circles(n: int, noise: float, rng: np.random.Generator,
             factor: float = 0.5) -> tuple[FloatArray, IntArray]:
    """sklearn.datasets.make_circles: unit circle (class 0) around a circle of radius factor."""
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0.0, 2.0 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0.0, 2.0 * np.pi, n_in, endpoint=False)
    X = np.vstack([
        np.column_stack([np.cos(t_out), np.sin(t_out)]),
        factor * np.column_stack([np.cos(t_in), np.sin(t_in)]),
    ])
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    return X + noise * rng.standard_normal(X.shape), y


def _blobs(n: int, n_features: int, n_classes: int, noise: float,
           rng: np.random.Generator) -> tuple[FloatArray, IntArray]:
    """sklearn.datasets.make_blobs: centres ~ U[-10, 10]^d, cluster std = noise."""
    centres = rng.uniform(-10.0, 10.0, size=(n_classes, n_features))
    y = _balanced_labels(n, n_classes)
    return centres[y] + noise * rng.standard_normal((n, n_features)), y


def _xor(n: int, noise: float, rng: np.random.Generator) -> tuple[FloatArray, IntArray]:
    """Four clusters at (+-1, +-1); label 1 where the centre's coordinates differ in sign."""
    # Corners ordered so that the classes alternate: any remainder n % 4 stays balanced.
    corners = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])
    cluster = _balanced_labels(n, 4)
    y = (corners[cluster, 0] * corners[cluster, 1] < 0).astype(np.int64)
    return corners[cluster] + noise * rng.standard_normal((n, 2)), y


def _linear(n: int, n_features: int, noise: float,
            rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """y = x @ w + b + N(0, noise^2) with x, w, b ~ N(0, 1)."""
    X = rng.standard_normal((n, n_features))
    w = rng.standard_normal((n_features, 1))
    b = rng.standard_normal()
    return X, X @ w + b + noise * rng.standard_normal((n, 1))


def _sine(n: int, noise: float, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """y = sin(x) + N(0, noise^2) with x ~ U(-pi, pi)."""
    X = rng.uniform(-np.pi, np.pi, size=(n, 1))
    return X, np.sin(X) + noise * rng.standard_normal((n, 1))


def make_synthetic(data: SyntheticData,
                   rng: np.random.Generator) -> tuple[FloatArray, npt.NDArray[Any]]:
    """Unshuffled float64 ``X`` (n, d) and targets for a synthetic spec, scales applied.

    Targets are int64 labels of shape (n,) for classification (balanced classes, in blocks) and
    float64 of shape (n, 1) for regression. ``input_scale`` multiplies X and ``target_scale``
    multiplies regression targets.
    """
    n, noise = data.n_samples, data.noise
    d, k = data.n_features, data.n_classes
    assert noise is not None and d is not None  # filled in by the spec's validator
    y: npt.NDArray[Any]
    if data.name == "spirals":
        assert k is not None
        X, y = _spirals(n, k, noise, rng)
    elif data.name == "moons":
        X, y = _moons(n, noise, rng)
    elif data.name == "circles":
        X, y = _circles(n, noise, rng)
    elif data.name == "blobs":
        assert k is not None
        X, y = _blobs(n, d, k, noise, rng)
    elif data.name == "xor":
        X, y = _xor(n, noise, rng)
    elif data.name == "linear":
        X, y = _linear(n, d, noise, rng)
    elif data.name == "sine":
        X, y = _sine(n, noise, rng)
    else:  # pragma: no cover - the spec's Literal rules this out
        raise ValueError(f"unknown synthetic data set {data.name!r}")
    X = X * data.input_scale
    if SYNTHETIC_DATASETS[data.name]["task"] == "regression":
        y = y * data.target_scale
    return X, y
