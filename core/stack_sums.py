"""Whole-stack sums that give each member its single run's bits: the per-segment sums of
squares of the norms and the moments (mean, std) of the activation statistics.

Every function here sums each member's numbers exactly as the single trainer sums its own
(the same NumPy or BLAS routine on the same elements, lengths and layout), one call for the
whole stack; a float32 sum that overflows is redone in float64 for the members concerned,
as the single trainer does. The common case (everything finite) is checked with one sum of
the results: a sum of floats is finite only when every term is.
"""

from __future__ import annotations

import math

import numpy as np

from core.layout import norms_by_reduceat

__all__ = ["all_finite", "flat_moments", "moments", "moments_and_dead",
           "segment_sumsq_batched", "segment_sumsq_pair"]

Array = np.ndarray


def all_finite(x: Array) -> bool:
    """Whether every element of ``x`` is finite, from one sum (a sum of finite terms may
    overflow: then the caller's exact check decides)."""
    return math.isfinite(float(x.sum()))


def flat_moments(rows: Array, sums: Array, sqs: Array, work: Array | None = None) -> bool:
    """Sum and sum of squares of each row of ``rows`` ``(K, n)`` into ``sums`` and ``sqs``
    ``(K,)`` float64: per row the single network's flat statistics of one buffer (a float64
    sum, and :func:`core.layout.sumsq`: one BLAS dot, redone in float64 where float32
    overflows). Returns whether every ``sqs`` is finite.

    ``work`` (``(K, n)`` float64, float32 ``rows`` of at most one buffer's worth of elements,
    :data:`CAST_ROW_MAX`) takes the rows cast to float64, summed by a plain reduction: the
    single network's ``sum(dtype=float64)`` casts a buffer of up to that many elements and
    sums it pairwise the same way, and the cast is exact; a cast in one call is cheaper than
    the reduction's buffered one, row by row."""
    if work is not None:
        np.copyto(work, rows)
        np.add.reduce(work, axis=1, out=sums)
    else:
        np.sum(rows, axis=1, dtype=np.float64, out=sums)
    q = np.matmul(rows[:, None, :], rows[:, :, None])[:, 0, 0]
    finite = all_finite(q)
    if rows.dtype != np.float64 and not finite:
        q = q.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(q))
        r64 = rows[bad].astype(np.float64)
        q[bad] = np.matmul(r64[:, None, :], r64[:, :, None])[:, 0, 0]
        finite = all_finite(q)
    sqs[...] = q
    return finite


def moments(sums: Array, sqs: Array, counts: Array, mean: Array, std: Array) -> None:
    """``mean = sums / counts`` and ``std = sqrt(max(sqs / counts - mean**2, 0))`` (``sqs``
    itself where it is not finite), elementwise into ``mean`` and ``std``: the single
    network's formulas for every member and layer at once (the same float64 operations)."""
    np.divide(sums, counts, out=mean)
    np.divide(sqs, counts, out=std)
    _spread(mean, std, sqs)


def moments_and_dead(totals: Array, divisors: Array, out: Array, sqs_finite: bool = False
                     ) -> None:
    """:func:`moments` and the dead fractions in one pass: ``totals`` ``(R, K, L)``, R >= 3
    (sums, sums of squares, alive units, then rows only divided), ``divisors`` ``(R, 1, L)``
    (counts, counts, units, ...); ``out[:, :, r]`` receives ``totals[r] / divisors[r]`` but
    for the means (r = 0), the stds (r = 1) and ``1 - alive / units`` (r = 2, NaN where
    ``totals[2]`` is): the single network's float64 operations, each member and layer at once
    (one division for all of them). ``sqs_finite``: the caller knows every ``totals[1]`` is
    finite (then the stds need no fallback: none is looked for)."""
    q = out[:, :, :len(totals)].transpose(2, 0, 1)
    np.divide(totals, divisors, out=q)
    mean, std, dead = q[0], q[1], q[2]
    _spread(mean, std, None if sqs_finite else totals[1])
    np.subtract(1.0, dead, out=dead)


def _spread(mean: Array, std: Array, sqs: Array | None) -> None:
    """``std`` (holding ``sqs / counts``) becomes ``sqrt(max(std - mean * mean, 0))``, or
    ``sqs`` where that is not finite: the single network's float64 operations, in place
    (``sqs`` None: all finite, known to the caller)."""
    np.subtract(std, np.square(mean), out=std)
    np.maximum(std, 0.0, out=std)
    np.sqrt(std, out=std)
    if sqs is not None and not all_finite(sqs):
        std[...] = np.where(np.isfinite(sqs), std, sqs)


def segment_sumsq_batched(flat: Array, bounds: Array, as_single: tuple[int, int] | None = None
                          ) -> Array:
    """Sum of squares of ``flat[:, bounds[j]:bounds[j + 1]]`` per row and segment,
    ``(K, len(bounds) - 1)`` float64, each row the numbers the single trainer's
    ``_norm_segments`` gives for that member: the same rule picks ``reduceat`` or one BLAS dot
    per segment (:func:`core.layout.norms_by_reduceat`, on ``as_single`` = (elements,
    segments) of the single trainer's call when it sums another buffer), and float32 sums that
    overflow are redone in float64 the same way (for the rows concerned only)."""
    K, n_seg = flat.shape[0], len(bounds) - 1
    size, segments = as_single or (flat.shape[1], n_seg)
    if norms_by_reduceat(size, segments):
        sums = np.add.reduceat(np.square(flat), bounds[:-1], axis=1)
        out = sums.astype(np.float64)
        if flat.dtype != np.float64 and not all_finite(sums):
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
            out[bad] = np.add.reduceat(np.square(flat[bad], dtype=np.float64), bounds[:-1],
                                       axis=1)
        return out
    out = np.empty((K, n_seg))
    for j in range(n_seg):
        seg = flat[:, int(bounds[j]):int(bounds[j + 1])]
        # per member one BLAS dot, the single trainer's np.dot(seg, seg): a stack of
        # (1, n) @ (n, 1) products is NumPy's dot routine on each member's row
        sums = np.matmul(seg[:, None, :], seg[:, :, None])[:, 0, 0]
        out[:, j] = sums
        if not all_finite(sums):
            for k in np.flatnonzero(~np.isfinite(sums)).tolist():
                out[k, j] = float(np.square(seg[k], dtype=np.float64).sum())
    return out


def segment_sumsq_pair(a: Array, b: Array, bounds: Array, fused: bool) -> Array:
    """The per-segment sums of squares of ``a`` and of ``b`` (both ``(K, n)``, segments
    ``bounds``), ``(2, K, len(bounds) - 1)``: ``[0, k]`` and ``[1, k]`` are member ``k``'s
    numbers of the single trainer's ``_norm_segments(np.concatenate((a[k], b[k])),
    bounds2)`` when ``fused`` (its one pass over weights and update side by side: where it
    sums with ``reduceat``, a float32 overflow anywhere in the row redoes the whole row in
    float64), else of its two calls on ``a[k]`` and ``b[k]``.

    The result is float64, or, when every sum is finite and was summed in ``a``'s dtype,
    those sums themselves: the single trainer's float64 numbers are then their exact casts
    (``np.sqrt(..., dtype=np.float64)`` gives its norms without a float64 copy). The squares
    of both go into one array summed by one ``reduceat`` (a segment's sum depends only on its
    elements, the same whichever row holds them)."""
    K, n = a.shape
    n_seg = len(bounds) - 1
    as_single = (2 * n, 2 * n_seg) if fused else None
    if not (fused and norms_by_reduceat(2 * n, 2 * n_seg)):
        return np.stack([segment_sumsq_batched(a, bounds, as_single),
                         segment_sumsq_batched(b, bounds, as_single)])
    squares = np.empty((2, K, n), a.dtype)  # the rows of a, then of b: one reduceat
    np.square(a, out=squares[0])
    np.square(b, out=squares[1])
    sums = np.add.reduceat(squares.reshape(2 * K, n), bounds[:-1], axis=1).reshape(2, K, n_seg)
    if a.dtype == np.float64 or all_finite(sums):
        return sums
    out = sums.astype(np.float64)
    for k in np.flatnonzero(~np.isfinite(out).all(axis=(0, 2))).tolist():
        for x, o in zip((a, b), (out[0, k], out[1, k]), strict=True):
            o[...] = np.add.reduceat(np.square(x[k], dtype=np.float64), bounds[:-1])
    return out
