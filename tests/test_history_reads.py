"""The vectorised downsampling (all series at once) picks exactly the points the rule names.

The reference below applies DESIGN.md's rule point by point in plain Python: per aligned
bucket its minimum and maximum (earliest on ties; NaN ignored), its first non-finite point
(a NaN takes the minimum's place, or the maximum's when the minimum is -Inf), and the range's
edge points; missing values are no points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.downsampling import (
    RollupBuilder,
    Summary,
    downsample_points,
    group_starts,
    reduce_segments,
    summarize_blocks,
)
from app.models import Job


def reference(steps: list[int], values: list[float], present: list[bool], bucket_size: int,
              edges: list[tuple[int, float]]) -> list[tuple[int, float]]:
    picked: dict[int, float] = dict(edges)
    buckets: dict[int, list[tuple[int, float]]] = {}
    for s, v, p in zip(steps, values, present, strict=True):
        if p:
            buckets.setdefault(s // bucket_size, []).append((s, v))
    for points in buckets.values():
        numeric = [(s, v) for s, v in points if not math.isnan(v)]
        nonfinite = [(s, v) for s, v in points if not math.isfinite(v)]
        lo = min(numeric, key=lambda p: p[1]) if numeric else None  # min keeps the first
        hi = max(numeric, key=lambda p: p[1]) if numeric else None
        nf = nonfinite[0] if nonfinite else None
        keep = [p for p in (lo, hi) if p is not None]
        if nf is not None and nf not in keep:  # a NaN nobody shows: it takes a place
            if lo is not None and lo[1] != -math.inf:
                keep.remove(lo)
            elif hi is not None and hi[1] != math.inf:
                keep.remove(hi)
            keep.append(nf)
        for s, v in keep:
            picked.setdefault(s, v)
    return sorted(picked.items())


finite_or_not = st.one_of(st.floats(-5, 5), st.sampled_from([math.nan, math.inf, -math.inf]),
                          st.sampled_from([0.0, 1.0]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(finite_or_not, st.booleans(), finite_or_not, st.booleans()),
                min_size=1, max_size=120),
       st.integers(1, 40), st.integers(1, 3))
def test_downsampling_all_series_at_once_matches_the_rule_point_by_point(
        rows: list[tuple[float, bool, float, bool]], bucket_size: int, gap: int) -> None:
    steps = [i * gap for i in range(len(rows))]
    values = np.array([[a, c] for a, _, c, _ in rows])
    present = np.array([[not b, not d] for _, b, _, d in rows])
    units = Summary.from_points(np.array(steps), values, present)
    edges = []
    for j in range(2):
        idx = [i for i in (0, len(rows) - 1) if present[i, j]]
        edges.append((np.array([steps[i] for i in idx], dtype=np.int64), values[idx, j]))
    got = downsample_points(units, bucket_size, edges)
    for j in range(2):
        want = reference(steps, values[:, j].tolist(), present[:, j].tolist(), bucket_size,
                         list(zip(edges[j][0].tolist(), edges[j][1].tolist(), strict=True)))
        assert got[j][0].tolist() == [s for s, _ in want]
        np.testing.assert_array_equal(got[j][1], np.array([v for _, v in want]))


@settings(max_examples=100, deadline=None)
@given(st.lists(finite_or_not, min_size=1, max_size=96), st.sampled_from([1, 2, 3, 4, 8]))
def test_whole_blocks_reduce_as_any_segments_do(values: list[float], k: int) -> None:
    """Equal-length segments take the axis-reduction path; split one segment in two and
    merge back, and the generic path must agree with it."""
    n = len(values) - len(values) % k or k
    vals = np.resize(np.array(values), n)[:, None]
    units = Summary.from_points(np.arange(n), vals, np.ones((n, 1), bool))
    whole = reduce_segments(units, np.arange(0, n, k))
    # generic path: uneven segments (first one split), then the two halves merged
    starts = np.unique(np.concatenate(([0, 1], np.arange(0, n, k)))) if k > 1 else np.arange(n)
    split = reduce_segments(units, starts)
    merged = reduce_segments(split, group_starts(split.start // k))
    for field in ("count", "min_step", "max_step", "nf_step"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(merged, field))
    for field in ("min_value", "max_value", "nf_value"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(merged, field))


def _same_summary(a: Summary, b: Summary) -> None:
    for field in ("start", "count", "min_step", "max_step", "nf_step", "min_value", "max_value",
                  "nf_value"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        assert x.tobytes() == y.tobytes(), field  # NaN payloads and -0.0 included


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(finite_or_not, st.booleans(), finite_or_not, st.booleans()),
                min_size=1, max_size=64),
       st.sampled_from([1, 2, 4, 8]), st.integers(0, 3))
def test_blocks_summarised_from_points_directly_match_the_units_reduced(
        rows: list[tuple[float, bool, float, bool]], k: int, first_block: int) -> None:
    n = len(rows) - len(rows) % k or k
    rows = (rows * k)[:n]
    values = np.array([[a, c] for a, _, c, _ in rows])
    present = np.array([[not b, not d] for _, b, _, d in rows])
    steps = np.arange(first_block * k, first_block * k + n)
    units = Summary.from_points(steps, values, present)
    _same_summary(summarize_blocks(steps, values, present, k),
                  reduce_segments(units, np.arange(0, n, k)))


def test_the_rollup_builder_gives_the_same_blocks_whatever_the_flushes() -> None:
    """Whole blocks of consecutive steps take the direct path, ragged or sparse ones the units:
    flushed either way (and all at once), the blocks of every level are the same."""
    rng = np.random.default_rng(3)
    n, s = 3000, 3
    values = rng.lognormal(size=(n, s))
    values[rng.random((n, s)) < 0.01] = math.nan
    values[rng.random((n, s)) < 0.005] = math.inf
    present = rng.random((n, s)) > 0.02
    steps = np.arange(n)
    sparse = rng.random(n) < 0.8

    def blocks(flush: int, keep: np.ndarray) -> list[tuple[int, list[int], Summary]]:
        builder = RollupBuilder(s, min_level=4)
        out = []
        st_, v, p = steps[keep], values[keep], present[keep]
        for a in range(0, len(st_), flush):
            out += builder.add(st_[a:a + flush], v[a:a + flush], p[a:a + flush])
        out += builder.finish()
        merged: dict[int, list[Summary]] = {}
        for b in out:
            merged.setdefault(b.level, []).append(b.summary)
        return [(lv, [], Summary.concat(parts)) for lv, parts in sorted(merged.items())]

    for keep in (np.ones(n, dtype=bool), sparse):
        whole = blocks(n, keep)
        for flush in (16, 48, 37, 500):
            got = blocks(flush, keep)
            assert [lv for lv, _, _ in got] == [lv for lv, _, _ in whole]
            for (_, _, a), (_, _, b) in zip(got, whole, strict=True):
                _same_summary(a, b)
    # the smallest level's blocks are the points' units reduced 16 by 16
    full = n - n % 16
    units = Summary.from_points(steps[:full], values[:full], present[:full])
    level4 = blocks(500, np.ones(n, dtype=bool))[0][2]
    _same_summary(level4.take(slice(0, full // 16)), reduce_segments(units, np.arange(0, full, 16)))


def test_a_range_inside_one_chunk_counts_its_steps_once(session_factory: Any) -> None:
    """A range whose both ends fall in the same chunk (the extent decodes that chunk's steps
    once), and ranges straddling two chunks, report exactly the recorded steps in them."""
    from app.db import unit_of_work
    from app.lifecycle import move_job
    from app.services import HistoryQuery, gradient_history
    from app.sink import DatabaseSink
    from core.telemetry import StepBlock
    from tests.test_storage import add_job

    n, n_layers = 3_000, 2
    steps = np.arange(0, 2 * n, 2)  # every other step recorded
    width = 4 + 8 * n_layers
    values = np.random.default_rng(0).lognormal(size=(n, width))
    job_id = add_job(session_factory, status="running", total_steps=2 * n)
    with unit_of_work(session_factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.spec = {"model": {"hidden": [{}]}}
    sink = DatabaseSink(job_id, session_factory, total_steps=2 * n, flush_every=500,
                        flush_interval=3600)
    for i in range(0, n, 64):  # as the trainer hands blocks over
        sink.write_block(StepBlock(n_layers, steps[i:i + 64], steps[i:i + 64] // 100,
                                   np.zeros(len(steps[i:i + 64]), bool), values[i:i + 64],
                                   np.ones((len(steps[i:i + 64]), width), bool)))
    sink.close()
    with unit_of_work(session_factory) as session:
        move_job(session, job_id, "succeeded")
    for lo, hi in [(1234, 1300), (1001, 1001), (990, 1010), (5, 5_990), (1999, 2001)]:
        with session_factory() as session:
            got = gradient_history(session, job_id, HistoryQuery(lo, hi, 10_000), layer=0,
                                   metrics=["grad_norm"])
        inside = steps[(steps >= lo) & (steps <= hi)]
        assert got["points_in_range"] == len(inside)
        if not inside.size:  # a range between two recorded steps holds nothing
            assert got["layers"] == [] and got["start_step"] is None
            continue
        series = got["layers"][0]["series"]["grad_norm"]
        assert series["steps"] == inside.tolist()
        np.testing.assert_array_equal(series["values"], values[inside // 2, 4])
