"""core.batched_monitor: the stack's array monitor raises exactly the scalar monitor's alerts.

A sweep whose members between them raise every kind of alert (growth warnings, setbacks, a
catapult, runaway and overshoot explosions, non-finite values) is trained batched — its
monitor advancing all members as arrays, replaying a member's step through a real
``core.Monitor`` only when something can happen — and each member alone; the alerts must be
identical, message and evidence included, as must the stop reasons and steps completed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import Monitor, Trainer, TrainingSpec
from core.batched import BatchedTrainer
from core.batched_monitor import StackMonitor
from core.diagnostics.monitor import WARMUP
from core.telemetry import LayerRecord, StepRecord

BASE: dict[str, Any] = {
    "seed": 0,
    "dtype": "float64",
    "data": {"source": "synthetic", "name": "moons", "n_samples": 1000},
    "loss": "binary_cross_entropy",
    "model": {"hidden": [{"units": 32}, {"units": 32}]},
    "training": {"epochs": 100, "batch_size": 32, "max_steps": 300},
}


def sweep(stop_on_explosion: bool) -> list[TrainingSpec]:
    specs = []
    for lr in (0.3045496, 0.9558498, 3.0):
        for std in np.geomspace(0.01, 1.0, 8).tolist():
            specs.append(TrainingSpec.model_validate({
                **BASE, "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
                "model": {**BASE["model"], "init": {"scheme": "normal", "std": std}},
                "monitor": {"stop_on_explosion": stop_on_explosion}}))
    return specs


@pytest.mark.parametrize("stop_on_explosion", [True, False], ids=["stop", "no_stop"])
def test_alerts_equal_the_scalar_monitors(stop_on_explosion: bool) -> None:
    specs = sweep(stop_on_explosion)
    batched = BatchedTrainer(specs).run(keep_records=False)
    kinds: set[str] = set()
    for spec, b in zip(specs, batched, strict=True):
        s = Trainer(spec).run(keep_records=False)
        assert (b.stop_reason, b.steps_completed) == (s.stop_reason, s.steps_completed)
        assert repr(b.alerts) == repr(s.alerts)  # kinds, steps, messages, evidence (NaN too)
        kinds |= {f"{a.kind}/{a.evidence.get('rule') or a.evidence.get('mechanism')}"
                  for a in s.alerts}
    # the sweep exercises every path of the monitor
    assert {"gradient_growth/None", "gradient_spike/unknown", "gradient_spike/catapult",
            "gradient_explosion/runaway", "gradient_explosion/overshoot"} <= kinds


def test_rows_follow_the_stack_and_quiet_steps_stay_in_arrays() -> None:
    specs = sweep(True)[:3]
    mon = StackMonitor(specs)
    scalar = [Monitor(s) for s in specs]
    results = [Trainer(s, monitor=False).run() for s in specs]
    n = min(len(r.steps) for r in results)
    for t in range(n):
        recs = [r.steps[t] for r in results]
        L = len(recs[0].layers)

        def col(field: str, recs: list[Any] = recs) -> np.ndarray:
            return np.array([[getattr(lr, field) for lr in r.layers] for r in recs])

        got = mon.observe(t, np.array([r.loss for r in recs]),
                          np.array([r.grad_norm for r in recs]), col("grad_norm"),
                          col("weight_norm"), col("update_norm"), col("act_std"),
                          recs.__getitem__)
        for k, (m, rec) in enumerate(zip(scalar, recs, strict=True)):
            assert repr(got.get(k, [])) == repr(m.observe(rec))
            assert bool(mon.confirmed[k]) == m.explosion_confirmed
        assert L == 3
        if t == 10:  # a member leaves: the others' rows move up and keep their state
            mon.keep_rows(np.array([0, 2]))
            scalar = [scalar[0], scalar[2]]
            results = [results[0], results[2]]
    # no member keeps a Monitor (the warm-up too is arrays; a real one only replays a step)
    assert not any(isinstance(v, Monitor) for v in vars(mon).values())


def test_a_replayed_step_leaves_the_callers_arrays_alone() -> None:
    # member 0's loss turns infinite at step 11 (its other figures finite): its step is
    # replayed through a real Monitor, whose state keeps the last finite loss; the trainer
    # still reads the step's own loss from its array afterwards (to locate the non-finite)
    specs = sweep(True)[:2]
    mon = StackMonitor(specs)
    scalar = [Monitor(s) for s in specs]
    results = [Trainer(s, monitor=False).run() for s in specs]
    for t in range(12):
        recs = [results[0].steps[t], results[1].steps[t]]
        if t == 11:
            recs[0].loss = float("inf")
        loss = np.array([r.loss for r in recs])

        def col(field: str, recs: list[Any] = recs) -> np.ndarray:
            return np.array([[getattr(lr, field) for lr in r.layers] for r in recs])

        arrays = [loss, np.array([r.grad_norm for r in recs]), col("grad_norm"),
                  col("weight_norm"), col("update_norm"), col("act_std")]
        before = [a.copy() for a in arrays]
        got = mon.observe(t, arrays[0], arrays[1], arrays[2], arrays[3], arrays[4], arrays[5],
                          recs.__getitem__)
        for a, b in zip(arrays, before, strict=True):
            assert np.array_equal(a, b)
        for k, (m, rec) in enumerate(zip(scalar, recs, strict=True)):
            assert repr(got.get(k, [])) == repr(m.observe(rec))
    assert loss[0] == np.inf and any(f.kind == "non_finite" for f in got[0])


def _stream(T: int = 140) -> list[tuple[Any, ...]]:
    """Six members' records: five quiet (noisy, the loss falling) but for one episode each —
    member 1 leaves its band and grows, member 2 runs far above H with its loss harmed,
    member 3 rewrites nearly half of its weights for a while (below the overshoot rule's
    ratio) and later more than half as its weights double and its loss climbs, member 4
    has a NaN loss in its warm-up, member 5 loses its progress (a setback)."""
    rng = np.random.default_rng(0)
    K, L = 6, 3
    w = np.full((K, L), 10.0)
    out = []
    for t in range(T):
        g = np.exp(rng.normal(0, 0.1, (K, L)))
        loss = 0.98 ** t * np.exp(rng.normal(0, 0.05, K)) + 0.01
        u = 0.1 * np.exp(rng.normal(0, 0.1, (K, L)))
        if 40 <= t < 46:
            g[1] *= 3.0 ** (t - 39)
        if 60 <= t < 68:
            g[2] *= 100.0 * 2 ** (t - 60)
            u[2] *= 30 * 2 ** (t - 60)
            loss[2] = 2.0
        if 30 <= t < 36:
            u[3] = 0.45 * w[3]
        if 70 <= t < 76:
            u[3] = 1.2 * w[3]
            w[3] = 1.9 * w[3]
            loss[3] = 0.5 * 30.0 ** (t - 69)
        if t == 2:
            loss[4] = math.nan
        if t >= 80:
            loss[5] = 1.5 * math.exp(rng.normal(0, 0.05))
        act = np.exp(rng.normal(0, 0.1, (K, L)))
        w = w * (1 + rng.normal(0, 0.001, (K, L)))
        out.append(_observed(t, loss, g, w, u, act))
    return out


def _observed(t: int, loss: np.ndarray, g: np.ndarray, w: np.ndarray, u: np.ndarray,
              act: np.ndarray) -> tuple[Any, ...]:
    """Step ``t`` of members' figures ``(K,)`` / ``(K, L)`` as the monitors take it: the
    arrays (copies) and each member's StepRecord."""
    K, L = g.shape
    gn = np.sqrt((g * g).sum(1))
    recs = [StepRecord(t, 0, float(loss[k]), float(gn[k]), float(gn[k]), 0.1, False,
                       [LayerRecord(i, float(g[k, i]), float(g[k, i]), float(w[k, i]),
                                    float(u[k, i]), 0.0, float(act[k, i]))
                        for i in range(L)]) for k in range(K)]
    return t, loss.copy(), gn, g.copy(), w.copy(), u.copy(), act, recs


def test_one_member_leaving_the_quiet_path_while_the_others_stay_on_it() -> None:
    # the stack's shortcuts for steps where every row is inside its band, tracks its update
    # scale, is far from H, rewrites little of its weights, cannot be in a setback, or is
    # still warming up, each crossed by one member while the others stay quiet: alerts,
    # confirmation and the state itself stay the scalar monitor's
    specs = sweep(True)[:6]
    mon = StackMonitor(specs)
    scalar = [Monitor(s) for s in specs]
    fields = {"base": "base", "spread": "spread", "healthy": "healthy", "ubase": "ubase",
              "uhealthy": "uhealthy", "best": "best_loss", "loss_avg": "loss_avg",
              "run_len": "run_len", "run_max_inc": "run_max_inc",
              "persist_run": "_persist_run", "persist_far": "_persist_far"}
    kinds = set()
    asked: list[tuple[int, int]] = []  # the records a real monitor replayed

    def record(k: int, t: int, recs: list[StepRecord]) -> StepRecord:
        asked.append((t, k))
        return recs[k]

    for t, loss, gn, g, w, u, act, recs in _stream():
        got = mon.observe(t, loss, gn, g, w, u, act, functools.partial(record, t=t, recs=recs))
        for k, m in enumerate(scalar):
            want = m.observe(recs[k])
            assert repr(got.get(k, [])) == repr(want), (t, k)
            assert bool(mon.confirmed[k]) == m.explosion_confirmed, (t, k)
            kinds |= {(k, a.kind, a.evidence.get("rule") or a.evidence.get("mechanism"))
                      for a in want}
            if m.state.n >= WARMUP and not m._non_finite_seen:
                st = m.state
                for key, attr in fields.items():
                    assert repr(float(mon.s[key][k])) == repr(float(getattr(st, attr))), (
                        t, k, key)
                assert int(mon.s["rw_from_step"][k]) == m._rewrite_from_step, (t, k)
    assert kinds == {(1, "gradient_growth", None), (2, "gradient_explosion", "runaway"),
                     (3, "gradient_explosion", "overshoot"), (4, "non_finite", None),
                     (5, "gradient_spike", "unknown")}
    assert bool(mon.confirmed[4])  # from its warm-up on
    # the warm-up and the quiet steps stay in arrays: only the alerts' steps were replayed
    assert asked == [(2, 4), (42, 1), (62, 2), (71, 3), (90, 5)]


def _random_stream(rng: np.random.Generator, K: int, T: int) -> list[tuple[Any, ...]]:
    """K members' records with episodes at random steps: a norm growing out of its band, a
    runaway with the loss harmed, weights rewritten (a little, or doubling with the loss
    climbing), a setback, an early catapult, zero norms and updates, a NaN or Inf somewhere."""
    L = 3
    w = np.exp(rng.normal(2.0, 1.0, (K, L)))
    noise = rng.uniform(0.01, 0.6, K)
    kind = rng.integers(0, 9, K)
    t0 = rng.integers(1, T, K)
    out = []
    for t in range(T):
        g = np.exp(rng.normal(0.0, noise[:, None], (K, L)))
        loss = 0.98 ** t * np.exp(rng.normal(0.0, noise)) + 0.01
        u = 0.05 * w * np.exp(rng.normal(0.0, 0.2, (K, L)))
        act = np.exp(rng.normal(0.0, 0.1, (K, L)))
        for k in range(K):
            dt = t - int(t0[k])
            if kind[k] == 0 and 0 <= dt < 8:  # growth
                g[k] *= 3.0 ** (dt + 1)
            elif kind[k] == 1 and 0 <= dt < 10:  # runaway
                g[k] *= 100.0 * 2 ** dt
                u[k] *= 30 * 2 ** dt
                loss[k] = 2.0
            elif kind[k] == 2 and 0 <= dt < 8:  # rewrites
                u[k] = rng.uniform(0.4, 1.3) * w[k]
                w[k] *= rng.uniform(1.0, 2.0)
                loss[k] *= 30.0 ** (dt * rng.uniform(0.0, 1.0))
            elif kind[k] == 3 and dt >= 0:  # setback
                loss[k] = 1.5 * math.exp(rng.normal(0, 0.05))
            elif kind[k] == 4 and 1 <= t <= 4:  # catapult
                loss[k] = 3.0 if t < 4 else 0.1
            elif kind[k] == 5 and dt == 0:  # a NaN or an Inf
                where = rng.integers(0, 4)
                bad = math.nan if rng.integers(0, 2) else math.inf
                if where == 0:
                    loss[k] = bad
                else:
                    (g, w, act)[where - 1][k, rng.integers(0, L)] = bad
            elif kind[k] == 6 and dt % 3 == 0:  # zero norms, an update of zero
                g[k] = 0.0
                u[k] = 0.0
            elif kind[k] == 7:  # the same norm every step
                g[k] = 1.0
        w = w * (1 + rng.normal(0, 0.001, (K, L)))
        out.append(_observed(t, loss, g, w, u, act))
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), K=st.integers(1, 7), mse=st.booleans(),
       leave=st.integers(0, 200))
def test_random_streams_raise_every_rows_scalar_alerts(seed: int, K: int, mse: bool,
                                                      leave: int) -> None:
    # random episodes (growth, runaway, rewrites, setbacks, catapults, zeros, NaN/Inf) on
    # random steps of random members: each row's alerts, message and evidence included, and
    # its confirmation stay its scalar monitor's at every step, also after a member leaves
    rng = np.random.default_rng(seed)
    specs = [TrainingSpec.model_validate({**BASE, "loss": "mse" if mse else BASE["loss"],
                                          "optimizer": {"name": "adam", "lr": 0.01}})] * K
    mon = StackMonitor(specs)
    scalar = [Monitor(s) for s in specs]
    rows = list(range(K))  # the stream's member of each row
    for t, loss, gn, g, w, u, act, recs in _random_stream(rng, K, 200):
        if t == leave and len(rows) > 1:
            keep = np.array([i for i in range(len(rows)) if i != len(rows) // 2])
            mon.keep_rows(keep)
            rows = [rows[i] for i in keep.tolist()]
            scalar = [scalar[i] for i in keep.tolist()]
        ix = np.array(rows)
        got = mon.observe(t, loss[ix], gn[ix], g[ix], w[ix], u[ix], act[ix],
                          lambda r, recs=recs, rows=rows: recs[rows[r]])
        for k, m in enumerate(scalar):
            assert repr(got.get(k, [])) == repr(m.observe(recs[rows[k]])), (t, k)
            assert bool(mon.confirmed[k]) == m.explosion_confirmed, (t, k)


def test_a_stack_without_activation_stats_over_more_steps_than_its_history_holds() -> None:
    # no activation stds (the forecaster's activation series all 0.0) and 300 steps: the
    # history's slots wrap around more than once, and every row's alerts (forecasts in
    # their evidence included) stay its scalar monitor's
    rng = np.random.default_rng(7)
    K = 9
    specs = [TrainingSpec.model_validate({**BASE, "optimizer": {"name": "adam", "lr": 0.01}})] * K
    mon = StackMonitor(specs)
    scalar = [Monitor(s) for s in specs]
    raised = 0
    for t, loss, gn, g, w, u, _, recs in _random_stream(rng, K, 300):
        recs = [dataclasses.replace(r, layers=[dataclasses.replace(lr, act_std=None)
                                               for lr in r.layers]) for r in recs]
        got = mon.observe(t, loss, gn, g, w, u, None, recs.__getitem__)
        for k, m in enumerate(scalar):
            want = m.observe(recs[k])
            assert repr(got.get(k, [])) == repr(want), (t, k)
            raised += len(want)
    assert raised


def test_windows_that_span_the_historys_wrap_around() -> None:
    # a setback's window and a runaway's forecast (grad norm, activation, loss series) span
    # the step where the history's slots wrap around: the alerts, their evidence and
    # forecasts included, stay the scalar monitor's
    rng = np.random.default_rng(3)
    K, L = 3, 3
    specs = [TrainingSpec.model_validate(BASE)] * K
    mon = StackMonitor(specs)
    scalar = [Monitor(s) for s in specs]
    w = np.full((K, L), 10.0)
    seen = []
    for t in range(160):
        g = np.exp(rng.normal(0, 0.1, (K, L)))
        loss = 0.98 ** t * np.exp(rng.normal(0, 0.05, K)) + 0.01
        u = 0.1 * np.exp(rng.normal(0, 0.1, (K, L)))
        act = np.exp(rng.normal(0, 0.1, (K, L)))
        if t >= 98:  # member 0 loses its progress
            loss[0] = 1.5 * math.exp(rng.normal(0, 0.05))
        if t >= 106:  # member 1 runs away, its activations and loss growing with it
            g[1] *= 100.0 * 2 ** (t - 106)
            u[1] *= 30 * 2 ** (t - 106)
            act[1] *= 2.0 ** (t - 106)
            loss[1] = 2.0 * 1.5 ** (t - 106)
        step = _observed(t, loss, g, w, u, act)
        got = mon.observe(*step[:7], step[7].__getitem__)
        for k, m in enumerate(scalar):
            want = m.observe(step[7][k])
            assert repr(got.get(k, [])) == repr(want), (t, k)
            seen += [(t, k, a.kind) for a in want]
    # (the slots wrap at step SLOTS - KEEP = 107: both windows hold steps before it)
    assert seen == [(107, 1, "gradient_explosion"), (108, 0, "gradient_spike")]


def test_an_update_whose_squares_overflow_sets_the_update_scale_as_the_scalars() -> None:
    # member 1's update norms are finite but their sum of squares overflows at step 30: its
    # update scale turns Inf, then NaN (Inf - Inf), then restarts from the next update, as
    # the scalar monitor's does
    steps = _stream(60)
    t, loss, gn, g, w, u, act, _ = steps[30]
    u = u.copy()
    u[1] = 1e200
    steps[30] = _observed(t, loss, g, w, u, act)
    specs = sweep(True)[:6]
    mon = StackMonitor(specs)
    scalar = [Monitor(s) for s in specs]
    seen = set()
    for t, loss, gn, g, w, u, act, recs in steps:
        got = mon.observe(t, loss, gn, g, w, u, act, recs.__getitem__)
        for k, m in enumerate(scalar):
            assert repr(got.get(k, [])) == repr(m.observe(recs[k])), (t, k)
            if m.state.n >= WARMUP and not m._non_finite_seen:
                for key in ("ubase", "uhealthy"):
                    want = float(getattr(m.state, key))
                    assert repr(float(mon.s[key][k])) == repr(want), (t, k, key)
                    if k == 1 and not math.isfinite(want):
                        seen.add((t, repr(want)))
    assert {(30, "inf"), (31, "nan")} <= seen
