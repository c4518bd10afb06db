"""The optimizers' base class: the flat parameter buffer, the step loop and its row groups.

:class:`Optimizer` owns the parameters and applies each step; the rules themselves
(:mod:`core.optimizers`) write only :meth:`Optimizer._update`. A stack of networks
(:mod:`core.batched`) passes ``(members, n_params)`` parameters: every rule is elementwise,
so any row slice of the buffers is updated exactly as the whole is. A large stack is
therefore updated in row groups of about :data:`GROUP_BYTES` per buffer (:func:`row_groups`):
a rule's several passes over one group (momentum, scaling, the update itself) run while the
group is in cache, instead of each pass streaming the whole stack (up to ~70 MB per buffer)
through memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["GROUP_BYTES", "GroupDone", "Optimizer", "Scratch", "lerp_", "row_groups"]

# bytes of one buffer's row group: the rules' 3-6 buffers of a group then stay within
# L2/L3. Measured on a (64, 269k) float32 SGD-momentum stack (AMD EPYC, 1 MB L2 / core,
# 32 MB L3): 19 ms per whole-stack step, 10-11 ms per step in groups of 1-4 MB, 15 ms at
# 128 KB (the per-group calls begin to cost), 11.7 ms at 8 MB. In the benchmark's large
# sweep (1.08 MB rows) groups of 1 to 4 rows gave the same CPU time within noise, 7 rows
# more: 3 MiB makes 2-row groups there.
GROUP_BYTES = 3 * 1024 * 1024

# step_groups calls it after each row group is updated: (rows, its updated params, its change)
GroupDone = Callable[[slice, np.ndarray, np.ndarray], None]


def row_groups(params: np.ndarray, group_bytes: int | None = None) -> list[slice]:
    """The row slices a step updates one after another: whole rows, about ``group_bytes``
    (default :data:`GROUP_BYTES`, read when called) per group, at least one row; a single
    ``slice(None)`` for one network or a stack that fits in one group."""
    limit = GROUP_BYTES if group_bytes is None else group_bytes
    if params.ndim != 2 or params.nbytes <= limit:
        return [slice(None)]
    rows = max(1, limit // max(params[0].nbytes, 1))
    if rows >= len(params):
        return [slice(None)]
    return [slice(r, r + rows) for r in range(0, len(params), rows)]


class Scratch:
    """A reusable work buffer shaped like the group being updated (its leading rows when the
    group is smaller): scratch, not per-member state, so :meth:`Optimizer.keep_rows` leaves
    it alone, and a grouped step reuses one group's worth, which stays in cache."""

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None

    def like(self, a: np.ndarray) -> np.ndarray:
        """A buffer of ``a``'s shape and dtype (its contents are undefined)."""
        buf = self._buf
        if (buf is None or buf.dtype != a.dtype or buf.shape[1:] != a.shape[1:]
                or len(buf) < len(a)):
            buf = self._buf = np.zeros_like(a)
        return buf if buf.shape == a.shape else buf[:len(a)]


class Optimizer:
    """Updates a flat parameter buffer in place, one gradient at a time.

    Parameters
    ----------
    params : ndarray of shape ``(n_params,)``
        The live parameters (float32 or float64). Updated in place by :meth:`step`. A stack of
        independent networks (:mod:`core.batched`) passes shape ``(members, n_params)`` and a
        ``(members, 1)`` array of learning rates: every rule is elementwise, so each row is
        updated exactly as it would be on its own.

    Attributes
    ----------
    params : ndarray of shape ``(n_params,)``
    steps : int
        Number of updates applied so far.
    """

    def __init__(self, params: np.ndarray) -> None:
        if params.ndim not in (1, 2) or params.dtype not in (np.float32, np.float64):
            raise ValueError(
                f"params must be a 1-D float32/float64 array (the flat buffer; 2-D for a "
                f"stack of networks), "
                f"got shape {params.shape} dtype {params.dtype}"
            )
        self.params = params
        self.steps = 0
        # np.zeros, not zeros_like: fresh zero pages, so a large stack stepped only by
        # step_groups (which never writes it) does not pay for filling it
        self._delta = np.zeros(params.shape, params.dtype)
        self._scratch = Scratch()
        self._group_delta = Scratch()  # a grouped step_groups' change, group by group
        self._rate_key = b""  # a stack's last rate column (bytes) and its whole-buffer copy
        self._rate_full: np.ndarray | None = None

    def step(self, grad: np.ndarray, lr: float | np.ndarray) -> np.ndarray:
        """Apply one update; return the change ``delta`` (``params_new = params_old + delta``).

        Parameters
        ----------
        grad : ndarray of shape ``(n_params,)``
            Gradient in the layout of ``params``. Used as scratch: it may be overwritten.
        lr : float
            Learning rate of this step (a stack: ``(members, 1)`` float64 rates, cast to the
            parameters' dtype where they meet them, as a Python float is).

        Returns
        -------
        ndarray of shape ``(n_params,)``
            The applied change: a buffer owned by the optimizer, valid until the next step.
        """
        self._step(grad, lr, None, keep_delta=True)
        return self._delta

    def step_groups(self, grad: np.ndarray, lr: float | np.ndarray,
                    group_done: GroupDone | None = None) -> None:
        """Apply one update as :meth:`step`, calling ``group_done(rows, params[rows],
        delta)`` as soon as each row group (:func:`row_groups`; one ``slice(None)`` but for a
        large stack) is updated, while it is still in cache (e.g. to take its norms).

        ``delta`` is the group's change, valid only during the call: a large stack's groups
        share one group-sized buffer (writing every change into a whole-stack buffer would
        be one more pass over memory, for numbers nobody reads later). Without ``group_done``:
        :meth:`step` for a caller that does not need the change."""
        self._step(grad, lr, group_done, keep_delta=False)

    def _step(self, grad: np.ndarray, lr: float | np.ndarray, group_done: GroupDone | None,
              keep_delta: bool) -> None:
        if grad.shape != self.params.shape:
            raise ValueError(f"grad has shape {grad.shape}, params {self.params.shape}")
        self.steps += 1
        with np.errstate(all="ignore"):
            rate: Any = lr if isinstance(lr, np.ndarray) else float(lr)  # (members, 1) when stacked
            groups = row_groups(self.params)
            if len(groups) == 1:
                self._update(slice(None), grad, rate, self._delta)
                np.add(self.params, self._delta, out=self.params)
                if group_done is not None:
                    group_done(slice(None), self.params, self._delta)
                return
            for rows in groups:
                params = self.params[rows]
                delta = self._delta[rows] if keep_delta else self._group_delta.like(params)
                # the group's (rows, 1) rates as they are: spreading them would add a pass
                self._update(rows, grad[rows],
                             rate[rows] if isinstance(rate, np.ndarray) else rate, delta)
                np.add(params, delta, out=params)
                if group_done is not None:
                    group_done(rows, params, delta)

    def _update(self, rows: slice, grad: np.ndarray, lr: Any, delta: np.ndarray) -> None:
        """Write this step's change of the parameters ``self.params[rows]`` into ``delta``
        (``self.steps`` >= 1). ``grad``, ``lr`` (a stack's rates) and ``delta`` are already
        the group's rows; the state arrays are sliced with ``rows``, scratch comes from
        :meth:`_work`."""
        raise NotImplementedError

    def _work(self, like: np.ndarray) -> np.ndarray:
        """Scratch of ``like``'s shape (one group's worth, reused by every group)."""
        return self._scratch.like(like)

    def _scalar(self, x: Any) -> Any:
        """A learning-rate expression as it meets the parameter arrays. A Python float (one
        network) is cast to their dtype by NumPy after being computed in float64; a stack's
        float64 ``(members, 1)`` values are cast the same way here, so that a float32 member
        gets exactly its single network's numbers.

        A whole stack's column is returned spread over the parameters' shape (kept while the
        rates do not change): for a small stack updated at once, NumPy multiplies two whole
        arrays ~1.7x faster than an array by a ``(members, 1)`` column (short rows), with the
        same products. A row group's column (fewer rows) is returned as a column: its rows are
        long, and a spread copy would be one more pass over memory."""
        if not isinstance(x, np.ndarray):
            return x
        rate = x.astype(self.params.dtype, copy=False)
        if rate.shape != (self.params.shape[0], 1) or self.params.ndim != 2:
            return rate
        key = rate.tobytes()
        full = self._rate_full
        if full is None or full.shape != self.params.shape:
            full = self._rate_full = np.empty_like(self.params)
        elif key == self._rate_key:
            return full
        np.copyto(full, rate)
        self._rate_key = key
        return full

    def keep_rows(self, rows: np.ndarray) -> None:
        """Stacked use: keep only the networks ``rows`` (increasing) of the parameters and of
        every state array (each ``(members, n_params)``), e.g. when some members stop.

        Rows move up in place and the arrays become their leading rows (no new allocation:
        a stack's buffers can be large). The last step's change and the spread rates are
        only cut (rewritten by the next step, or their rates' key no longer matches): moving
        them would be a pass over memory for nothing.
        """
        for name, value in list(vars(self).items()):
            if isinstance(value, np.ndarray) and value.ndim == 2:
                if name not in ("_delta", "_rate_full"):
                    for dst, src in enumerate(rows.tolist()):
                        if dst != src:
                            value[dst] = value[src]
                setattr(self, name, value[:len(rows)])

    def _add_weight_decay(self, rows: slice, grad: np.ndarray, weight_decay: float,
                          tmp: np.ndarray) -> None:
        """L2 penalty as torch: ``grad += weight_decay * params[rows]`` (``tmp`` is scratch)."""
        if weight_decay != 0:
            np.multiply(self.params[rows], weight_decay, out=tmp)
            np.add(grad, tmp, out=grad)


def lerp_(start: np.ndarray, end: np.ndarray, weight: float, tmp: np.ndarray) -> None:
    """``start += weight * (end - start)`` in place, with torch ``lerp_``'s two-sided formula."""
    np.subtract(end, start, out=tmp)
    if abs(weight) < 0.5:
        tmp *= weight
        start += tmp
    else:
        tmp *= 1.0 - weight
        np.subtract(end, tmp, out=start)
