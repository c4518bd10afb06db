"""Whole-stack sums that give each member its single run's bits: the flat activation
statistics of one buffer and the per-segment sums of squares of the norms."""

from __future__ import annotations

import math

import numpy as np

from core.layout import norms_by_reduceat

__all__ = ["flat_stats", "segment_sumsq_batched"]

Array = np.ndarray


def flat_stats(rows: Array, out: Array) -> None:
    """Mean and std of each row of ``rows`` ``(K, n)`` into ``out[:, 0]`` and ``out[:, 1]``:
    per row the single network's flat statistics of one buffer (a float64 sum, and
    :func:`core.layout.sumsq`: one BLAS dot, redone in float64 where float32 overflows)."""
    n = rows.shape[1]
    sums = rows.sum(axis=1, dtype=np.float64)
    q = np.matmul(rows[:, None, :], rows[:, :, None])[:, 0, 0].astype(np.float64)
    if rows.dtype != np.float64:
        bad = np.flatnonzero(~np.isfinite(q))
        if bad.size:
            r64 = rows[bad].astype(np.float64)
            q[bad] = np.matmul(r64[:, None, :], r64[:, :, None])[:, 0, 0]
    mean = np.divide(sums, n, out=out[:, 0])
    spread = np.sqrt(np.maximum(q / n - mean * mean, 0.0))
    out[:, 1] = np.where(np.isfinite(q), spread, q)


def segment_sumsq_batched(flat: Array, bounds: Array, as_single: tuple[int, int] | None = None
                          ) -> Array:
    """Sum of squares of ``flat[:, bounds[j]:bounds[j + 1]]`` per row and segment,
    ``(K, len(bounds) - 1)`` float64, each row the numbers the single trainer's
    ``_norm_segments`` gives for that member: the same rule picks ``reduceat`` or one BLAS dot
    per segment (:func:`core.layout.norms_by_reduceat`, on ``as_single`` = (elements,
    segments) of the single trainer's call when it sums another buffer, e.g. weights and
    update side by side), and float32 sums that overflow are redone in float64 the same way
    (for the rows concerned only)."""
    K, n_seg = flat.shape[0], len(bounds) - 1
    size, segments = as_single or (flat.shape[1], n_seg)
    if norms_by_reduceat(size, segments):
        out = np.add.reduceat(np.square(flat), bounds[:-1], axis=1).astype(np.float64)
        if flat.dtype != np.float64 and not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
            out[bad] = np.add.reduceat(np.square(flat[bad], dtype=np.float64), bounds[:-1],
                                       axis=1)
        return out
    out = np.empty((K, n_seg))
    for j in range(n_seg):
        seg = flat[:, int(bounds[j]):int(bounds[j + 1])]
        for k in range(K):  # one BLAS dot per member, as the single trainer's
            s = float(np.dot(seg[k], seg[k]))
            if not math.isfinite(s):
                s = float(np.square(seg[k], dtype=np.float64).sum())
            out[k, j] = s
    return out
