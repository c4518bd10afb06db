"""The diagnosis's fast paths give the straightforward computation's numbers, bit for bit.

``core.diagnostics.medians`` replaces per-window ``np.median`` calls (a Python loop) by one
sort; these tests compare it with the loop it replaces on generated series holding NaN,
+-Inf, signed zeros, subnormals and values whose sum overflows. The monitor's replay from the
records' columns is compared with the plain ``Monitor.observe`` loop on generated runs
(jumps, non-finite values, thinned steps).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.diagnostics.medians import (
    column_medians,
    median,
    nan_column_medians,
    sliding_medians,
    window_medians,
)
from core.diagnostics.replay import Replay, record_figures, replay_monitor
from core.diagnostics.series import RunSeries
from core.spec import TrainingSpec
from core.telemetry import LayerRecord, StepRecord

VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, 1.0, 2.0, math.nan, math.inf]),
)
SERIES = st.lists(VALUES, min_size=0, max_size=300).map(lambda v: np.array(v, dtype=np.float64))


def reference(x: np.ndarray) -> float:
    """The detectors' median before: np.median of the finite values."""
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        return float(np.median(x)) if x.size else math.nan


def same(a: float, b: float) -> bool:
    """Equal as the report's JSON would print them (NaN == NaN, -0.0 != 0.0)."""
    return repr(float(a)) == repr(float(b))


@settings(max_examples=400, deadline=None)
@given(SERIES)
def test_median_is_np_median_of_the_finite_values(x: np.ndarray) -> None:
    assert same(median(x), reference(x))


@settings(max_examples=300, deadline=None)
@given(SERIES, st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_window_medians_are_the_per_window_loop(x: np.ndarray, widths: list[int]) -> None:
    starts = np.cumsum([0, *widths])
    starts = starts[starts < max(len(x), 1)] if len(x) else starts[:0]
    got = window_medians(x, starts)
    bounds = [*starts.tolist(), len(x)]
    want = [reference(x[a:b]) for a, b in itertools.pairwise(bounds)]
    assert len(got) == len(want)
    assert all(same(g, w) for g, w in zip(got, want, strict=True))


@settings(max_examples=300, deadline=None)
@given(SERIES, st.integers(1, 25))
def test_sliding_medians_are_the_per_start_loop(x: np.ndarray, width: int) -> None:
    got = sliding_medians(x, width)
    want = [reference(x[i:i + width]) for i in range(len(x))]
    assert all(same(g, w) for g, w in zip(got, want, strict=True)) and len(got) == len(want)


@settings(max_examples=300, deadline=None)
@given(SERIES, st.integers(1, 6))
def test_column_medians_are_the_per_column_loop(x: np.ndarray, cols: int) -> None:
    m = x[: len(x) - len(x) % cols].reshape(-1, cols)
    got = column_medians(m)
    want = [reference(m[:, k]) for k in range(cols)]
    assert all(same(g, w) for g, w in zip(got, want, strict=True)) and len(got) == cols


@settings(max_examples=300, deadline=None)
@given(SERIES, st.integers(1, 6))
def test_nan_column_medians_are_np_nanmedian(x: np.ndarray, cols: int) -> None:
    m = x[: len(x) - len(x) % cols].reshape(-1, cols)
    m = np.where(np.isfinite(m), m, np.nan)
    got = nan_column_medians(m)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(m, axis=0)
    assert all(same(g, w) for g, w in zip(got, want, strict=True)) and len(got) == cols


# ------------------------------------------------------------------ the monitor's replay
SPEC = TrainingSpec.model_validate({
    "data": {"source": "synthetic", "name": "moons", "n_samples": 64},
    "model": {"hidden": [{"units": 4, "activation": "relu"}, {"units": 4, "activation": "tanh"}]},
})
FIGURE = st.one_of(
    st.floats(min_value=1e-8, max_value=1e3),
    st.sampled_from([0.0, math.nan, math.inf, -1.0, 1e300, 5e-324]),
)


@st.composite
def runs(draw: st.DrawFn) -> list[StepRecord]:
    """Records of a 3-layer run: a drifting norm and loss with jumps, non-finite values, None
    activation statistics and thinned (gapped) steps."""
    n = draw(st.integers(0, 150))
    walk = draw(st.lists(st.floats(-1.5, 1.5), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    odd = draw(st.dictionaries(st.integers(0, max(n - 1, 0)), FIGURE, max_size=6))
    field = draw(st.sampled_from(["loss", "grad_norm", "weight_norm", "update_norm", "act_std"]))
    out: list[StepRecord] = []
    step, lg = -1, 0.0
    for i in range(n):
        step += gaps[i]
        lg += walk[i]
        g = math.exp(lg)
        vals = {"loss": math.exp(0.7 * lg) + 0.01, "grad_norm": g, "weight_norm": 1.0 + 0.01 * i,
                "update_norm": 0.05 * g, "act_std": 1.0}
        if i in odd:
            vals[field] = odd[i]
        layers = [LayerRecord(k, g / 2, g / 3, vals["weight_norm"], vals["update_norm"] / 2,
                              0.1, vals["act_std"] if k < 2 else None,
                              0.2 if k == 0 else None, 0.1 if k == 1 else None)
                  for k in range(3)]
        out.append(StepRecord(step, 0, vals["loss"], vals["grad_norm"], vals["grad_norm"],
                              0.1, False, layers))
    return out


def dump(rep: Replay) -> str:
    return repr((rep.base.tolist(), rep.upper.tolist(), rep.healthy.tolist(), rep.confirmed_at,
                 rep.rule, rep.run_start_step, [a.model_dump_json() for a in rep.alerts],
                 [a.model_dump_json() for a in rep.spike_alerts],
                 rep.forecast.model_dump_json() if rep.forecast else None,
                 rep.first_forecast.model_dump_json() if rep.first_forecast else None))


@settings(max_examples=150, deadline=None)
@given(runs())
def test_replay_from_columns_is_observe_record_by_record(records: list[StepRecord]) -> None:
    """The replay given the columns (advance/judge, quiet steps) is the plain observe loop."""
    series = RunSeries.from_records(SPEC, records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert dump(replay_monitor(SPEC, records, series)) == dump(replay_monitor(SPEC, records))


def safe_log(x: float) -> float:
    return math.log(x) if x > 0 else -745.0 if x == 0 else math.nan


@settings(max_examples=150, deadline=None)
@given(runs())
def test_record_figures_are_what_observe_computes(records: list[StepRecord]) -> None:
    """Each finite record's figures, computed for all records at once, are the ones
    ``Monitor.observe`` computes from the record (its loops over the layers)."""
    fig = record_figures(RunSeries.from_records(SPEC, records), records)
    assert fig is not None or not records
    if fig is None:
        return
    for i, r in enumerate(records):
        finite = (math.isfinite(r.loss) and math.isfinite(r.grad_norm) and all(
            math.isfinite(x.weight_norm) and math.isfinite(x.update_norm)
            and math.isfinite(x.grad_norm) and (x.act_std is None or math.isfinite(x.act_std))
            for x in r.layers))
        assert fig.fast[i] == finite
        if not finite:
            continue
        usq, rewrite, act = 0.0, 0.0, 0.0
        for x in r.layers:
            usq += x.update_norm * x.update_norm
            if x.weight_norm > 0 and x.update_norm / x.weight_norm > rewrite:
                rewrite = x.update_norm / x.weight_norm
            if x.act_std is not None and x.act_std > act:
                act = x.act_std
        want = (safe_log(r.grad_norm), safe_log(r.loss), 0.5 * safe_log(usq), rewrite, act,
                [x.weight_norm for x in r.layers])
        got = (fig.lg[i], fig.ll[i], fig.lu[i], fig.rewrite[i], fig.act[i], fig.weights[i])
        assert repr(got) == repr(want)
