"""core.sweep (axes -> member specs, limits) and core.stability (outcomes, grid, boundary,
preflight calibration) on a real small sweep."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from core import Trainer
from core.stability import calibration, member_outcome, stability_grid, train_sweep
from core.sweep import SweepAxis, SweepError, SweepLimits, expand_sweep, set_path

BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
    "model": {"hidden": [{"units": 16}] * 6, "init": {"scheme": "normal", "std": 0.3}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "training": {"epochs": 4, "batch_size": 16},
}


def test_log_range_gives_log_spaced_values_with_both_ends() -> None:
    axis = SweepAxis(path="optimizer.lr", log_range=[1e-3, 1.0], points=4)
    assert axis.grid() == [0.001, 0.01, 0.1, 1.0]
    with pytest.raises(ValidationError, match="either `values` or `log_range`"):
        SweepAxis(path="seed")
    with pytest.raises(ValidationError, match="> 0"):
        SweepAxis(path="optimizer.lr", log_range=[0.0, 1.0], points=3)


def test_members_are_the_grid_of_all_axes_first_axis_slowest() -> None:
    members = expand_sweep(BASE, [SweepAxis(path="optimizer.lr", values=[0.1, 0.2]),
                                  SweepAxis(path="seed", values=[1, 2, 3])])
    assert [m.values for m in members[:4]] == [
        {"optimizer.lr": 0.1, "seed": 1}, {"optimizer.lr": 0.1, "seed": 2},
        {"optimizer.lr": 0.1, "seed": 3}, {"optimizer.lr": 0.2, "seed": 1}]
    assert [(m.spec.optimizer.lr, m.spec.seed) for m in members] == [
        (0.1, 1), (0.1, 2), (0.1, 3), (0.2, 1), (0.2, 2), (0.2, 3)]
    assert members[0].spec.optimizer.momentum == 0.9  # the rest of the base is kept


def test_model_depth_repeats_the_first_hidden_layer() -> None:
    spec = set_path({"model": {"hidden": [{"units": 7, "activation": "tanh"}, {"units": 3}]}},
                    "model.depth", 5)
    assert spec["model"]["hidden"] == [{"units": 7, "activation": "tanh"}] * 5
    members = expand_sweep(BASE, [SweepAxis(path="model.depth", values=[1, 6])])
    assert [len(m.spec.model.hidden) for m in members] == [1, 6]
    assert set_path({"a": [{"b": 1}]}, "a.0.b", 2) == {"a": [{"b": 2}]}


def test_limits_and_invalid_members_name_what_is_wrong() -> None:
    axes = [SweepAxis(path="optimizer.lr", log_range=[1e-3, 1.0], points=40),
            SweepAxis(path="seed", values=list(range(30)))]
    with pytest.raises(SweepError, match="max_members is 1024") as info:
        expand_sweep(BASE, axes)
    assert info.value.limit == "max_members"
    with pytest.raises(SweepError, match="max_total_steps") as info:
        expand_sweep(BASE, axes[:1], SweepLimits(max_total_steps=500))
    assert info.value.limit == "max_total_steps"
    with pytest.raises(SweepError, match=r"model\.init") as info:
        expand_sweep({**BASE, "model": {"init": {"scheme": "he_normal"}}},
                     [SweepAxis(path="model.init.std", values=[0.1])])
    assert info.value.loc[0] == "spec"
    with pytest.raises(SweepError, match="twice"):
        expand_sweep(BASE, [SweepAxis(path="seed", values=[1]),
                            SweepAxis(path="seed", values=[2])])


def test_outcomes_grid_boundary_and_calibration_of_a_real_sweep() -> None:
    members = expand_sweep(BASE, [SweepAxis(path="model.init.std", values=[0.3, 2.0]),
                                  SweepAxis(path="optimizer.lr", values=[0.001, 0.01, 3.0])])
    outcomes = train_sweep(members)
    by_values = {(o.values["model.init.std"], o.values["optimizer.lr"]): o for o in outcomes}
    # std 2.0 on 6 x 16 ReLU units is far too large: exploding whatever the learning rate
    assert all(by_values[(2.0, lr)].verdict == "exploding" for lr in (0.001, 0.01, 3.0))
    assert by_values[(0.3, 0.001)].verdict != "exploding"
    for o in outcomes:  # the outcome is the diagnosis of the member's own run
        single = member_outcome(members[o.index], Trainer(members[o.index].spec).run())
        assert (o.verdict, o.stop_reason, o.first_bad_step) == (
            single.verdict, single.stop_reason, single.first_bad_step)
        assert o.predicted_risk in ("low", "medium", "high", "critical")
    exploding = [o for o in outcomes if o.verdict == "exploding"]
    assert all(o.peak_to_baseline is None or o.peak_to_baseline > 1 for o in exploding)

    grid = stability_grid(outcomes, x="optimizer.lr", y="model.init.std")
    assert grid.x_values == [0.001, 0.01, 3.0] and grid.y_values == [0.3, 2.0]
    assert grid.verdict[1] == ["exploding"] * 3
    assert grid.member[0][0] == by_values[(0.3, 0.001)].index
    top = grid.rows[1]
    assert top["smallest_exploding"] == 0.001 and top["largest_healthy"] is None
    cal = grid.to_dict()["calibration"]
    assert cal["cells"] == 6
    assert cal["true_exploding"] + cal["missed"] == sum(
        v == "exploding" for row in grid.verdict for v in row)
    with pytest.raises(ValueError, match="not an axis"):
        stability_grid(outcomes, x="seed", y="optimizer.lr")


def test_calibration_counts_the_four_cases() -> None:
    cal = calibration([("exploding", "critical"), ("healthy", "high"), ("exploding", "low"),
                       ("stalled", "medium"), ("healthy", "low")])
    assert cal == {"cells": 5, "true_exploding": 1, "false_alarm": 1, "missed": 1,
                   "true_safe": 2, "agreement": 0.6}
    assert calibration([])["agreement"] is None
    assert not math.isnan(cal["agreement"])
