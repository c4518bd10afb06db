"""A stacked run's rows of figures as :class:`core.telemetry.StepRecord` objects.

:mod:`core.stack_recording` keeps each member's emitted rows as arrays; its kept history
(``TrainingResult.steps``) is built here when first read, column-wise: every present figure's
column is converted in one ``tolist`` (absent figures never: None stands in their place) and
the records are filled slot by slot, one loop per layer and one for the steps, all of a
member's hand-overs (:data:`Part`) in one pass, with the cyclic garbage collector paused (and
the new records kept out of its young generations: they hold no cycles).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Any

import numpy as np

from core.telemetry import LAYER_FIELDS, STEP_FIELDS, LayerRecord, StepBlock, StepRecord

__all__ = ["Part", "part_of", "records_of", "records_of_parts"]

Array = np.ndarray


def records_of(block: StepBlock) -> list[StepRecord]:
    """Every row of ``block`` as a :class:`StepRecord` (column-wise, as the module says)."""
    if not len(block):
        return []
    with _gc_paused():
        return _records(block.n_layers, block.steps, block.epochs, block.clipped, block.values,
                        block.present[0])


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while records are built, and the new records put in
    its oldest generation before it is back on.

    The records hold no cycles, and building tens of thousands of them would otherwise set off
    collection after collection (each traversing every tracked object), several times the
    construction's cost. Re-enabled as is, the collector would still traverse them all once
    they count as young (a collection on the next allocation, again as they age, and now and
    then a full one): about half the construction's cost again.

    So the young generations are collected first (cheap: little is young between two
    members' builds), judging the objects of others as a young collection would, and after
    the build the young objects, now only records (and what is still live of their building),
    move to the oldest generation untraversed: ``gc.freeze`` then ``gc.unfreeze``, two list
    splices. Not when something else keeps objects frozen (a pre-fork server's
    ``gc.freeze``): unfreezing would hand its objects back to the collector."""
    if not gc.isenabled():
        yield
        return
    promote = gc.get_freeze_count() == 0
    if promote:
        gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if promote:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def _records(n_layers: int, steps: Array, epochs: Array, clipped: Array, values: Array,
             present: Array) -> list[StepRecord]:
    """The rows of ``values`` (``(n, n_values)``, ``present``: which figures apply, one row for
    all) as StepRecords.

    Column-wise: the present figures become floats in one ``tolist`` (absent ones are never
    converted: None stands in their place), then each layer's records and the step records
    are filled in one loop each (:func:`_layer_records`, :func:`_step_records`)."""
    n, L = len(steps), n_layers
    ns, nl = len(STEP_FIELDS), len(LAYER_FIELDS)
    if present.shape != (ns + L * nl,) or values.shape[1:] != present.shape:
        raise ValueError(f"a present row of {ns + L * nl} figures for {L} layers, "
                         f"got {present.shape} (values {values.shape})")
    on: list[bool] = present.tolist()
    figures = iter(values.T.tolist() if all(on) else values.T[present].tolist())
    cols: list[Iterable[Any]] = [next(figures) if p else repeat(None, n) for p in on]
    per_layer = [_layer_records(ly, n, cols[ns + ly * nl:ns + (ly + 1) * nl])
                 for ly in range(L)]
    layers: Iterator[list[LayerRecord]] = (
        map(list, zip(*per_layer, strict=True)) if L else ([] for _ in range(n)))
    return _step_records(steps.tolist(), epochs.tolist(), cols[:ns], clipped.tolist(), layers)


_new = object.__new__


def _layer_records(layer: int, n: int, cols: list[Iterable[Any]]) -> list[LayerRecord]:
    """The ``n`` LayerRecords of ``layer`` in ``cols`` (columns of its :data:`LAYER_FIELDS`).

    Each slot is set in one loop over the rows, not through ``__init__``: a Python call per
    record is most of its cost (the records are equal, field by field and type by type, to
    those the constructor gives: tests/test_stack_recording.py)."""
    out = list(map(_new, repeat(LayerRecord, n)))
    rows = zip(out, *cols, strict=True)
    for r, grad, w_grad, weight, update, mean, std, dead, sat in rows:
        r.layer = layer
        r.grad_norm = grad
        r.weight_grad_norm = w_grad
        r.weight_norm = weight
        r.update_norm = update
        r.act_mean = mean
        r.act_std = std
        r.dead_fraction = dead
        r.saturated_fraction = sat
    return out


def _step_records(steps: list[int], epochs: list[int], cols: list[Iterable[Any]],
                  clipped: list[bool], layers: Iterable[list[LayerRecord]]) -> list[StepRecord]:
    """StepRecords from their fields' columns (``cols``: the :data:`STEP_FIELDS`), filled as
    :func:`_layer_records` fills LayerRecords."""
    out = list(map(_new, repeat(StepRecord, len(steps))))
    rows = zip(out, steps, epochs, *cols, clipped, layers, strict=True)
    for r, step, epoch, loss, grad, clipped_grad, lr, clip, lay in rows:
        r.step = step
        r.epoch = epoch
        r.loss = loss
        r.grad_norm = grad
        r.clipped_grad_norm = clipped_grad
        r.lr = lr
        r.clipped = clip
        r.layers = lay
    return out


Part = tuple[Array, Array, Array, Array, Array]
"""Rows of one hand-over: steps, epochs, clipped, values, and the ``present`` row."""


def part_of(block: StepBlock, rows: list[int] | None = None) -> Part:
    """``block``'s rows (those listed, or all) as a :data:`Part`."""
    if not len(block):  # no row to take ``present`` from (and none to build)
        return block.steps, block.epochs, block.clipped, block.values, block.present
    if rows is None or len(rows) == len(block):
        return block.steps, block.epochs, block.clipped, block.values, block.present[0]
    return (block.steps[rows], block.epochs[rows], block.clipped[rows], block.values[rows],
            block.present[0])


def records_of_parts(n_layers: int, parts: list[Part]) -> list[StepRecord]:
    """The rows of ``parts``, in order, as StepRecords: consecutive parts with the same
    ``present`` row joined, so that their records are built in one pass."""
    out: list[StepRecord] = []
    parts = [p for p in parts if len(p[0])]
    with _gc_paused():
        i = 0
        while i < len(parts):
            j = i + 1
            present = parts[i][4]
            while j < len(parts) and (parts[j][4] is present
                                      or np.array_equal(parts[j][4], present)):
                j += 1
            run = parts[i:j]
            if len(run) == 1:
                steps, epochs, clipped, values, _ = run[0]
            else:
                steps, epochs, clipped, values = (np.concatenate([p[f] for p in run])
                                                  for f in range(4))
            out += _records(n_layers, steps, epochs, clipped, values, present)
            i = j
    return out
