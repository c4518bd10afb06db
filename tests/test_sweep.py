"""core.sweep (axes -> member specs, limits) and core.stability (outcomes, grid, boundary,
preflight calibration) on a real small sweep."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from core import Trainer, TrainingSpec
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


DATA_ONLY: dict[str, Any] = {"data": {"source": "synthetic", "name": "spirals", "n_samples": 100},
                             "training": {"epochs": 2}}


def test_an_axis_into_an_object_the_base_leaves_out_starts_from_its_default() -> None:
    # no optimizer, model, clipping or schedule: each starts from what the spec would use
    members = expand_sweep(DATA_ONLY, [SweepAxis(path="optimizer.lr", values=[0.1, 0.2]),
                                       SweepAxis(path="model.init.std", values=[0.5]),
                                       SweepAxis(path="clipping.clip_value", values=[2.0]),
                                       SweepAxis(path="schedule.step_size", values=[7])])
    assert [m.spec.optimizer.lr for m in members] == [0.1, 0.2]
    explicit = TrainingSpec.model_validate({
        **DATA_ONLY, "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
        "model": {"init": {"scheme": "normal", "std": 0.5}},
        "clipping": {"mode": "value", "clip_value": 2.0},
        "schedule": {"name": "step", "step_size": 7}})
    assert members[1].spec == explicit  # the default SGD (momentum 0.9) with lr 0.2, ...
    assert members[1].spec.optimizer == TrainingSpec.model_fields["optimizer"].default.model_copy(
        update={"lr": 0.2})
    # a list the base leaves out is the default one (two 64-unit ReLU layers), then indexed
    (member,) = expand_sweep(DATA_ONLY, [SweepAxis(path="model.hidden.1.units", values=[5])])
    assert [(h.units, h.activation) for h in member.spec.model.hidden] == [(64, "relu"),
                                                                          (5, "relu")]
    # an axis that names the kind picks it: the default object only when it is that kind
    members = expand_sweep(DATA_ONLY, [SweepAxis(path="optimizer.name", values=["sgd", "adam"]),
                                       SweepAxis(path="clipping.mode",
                                                 values=["global_norm", "layer_norm"]),
                                       SweepAxis(path="clipping.max_norm", values=[3.0])])
    assert [(m.spec.optimizer.name, m.spec.optimizer.lr) for m in members[::2]] == [
        ("sgd", 0.01), ("adam", 0.001)]
    assert members[0].spec.optimizer.momentum == 0.9  # type: ignore[union-attr]
    assert [m.spec.clipping.model_dump() for m in members[:2]] == [
        {"mode": "global_norm", "max_norm": 3.0}, {"mode": "layer_norm", "max_norm": 3.0}]
    assert set_path({}, "optimizer.lr", 0.3) == {
        "optimizer": {"name": "sgd", "lr": 0.3, "momentum": 0.9}}


def test_left_out_objects_and_dependent_defaults_are_resolved_per_member() -> None:
    # defaults that depend on other fields follow each member's own values: the generator's
    # class count and the loss (cross_entropy for classification, mse for regression)
    members = expand_sweep(DATA_ONLY, [SweepAxis(path="data.name",
                                                 values=["spirals", "moons", "sine"]),
                                       SweepAxis(path="optimizer.lr", values=[0.05])])
    assert [(m.spec.data.n_classes, m.spec.loss) for m in members] == [  # type: ignore[union-attr]
        (3, "cross_entropy"), (2, "cross_entropy"), (None, "mse")]
    assert all(m.spec.optimizer.lr == 0.05 for m in members)
    # a hidden layer's init (null: model.init) starts from the member's own model.init, set by
    # a later axis, whatever the order of the axes
    base = {**DATA_ONLY, "model": {"init": {"scheme": "normal", "std": 0.3, "bias": 0.1}}}
    members = expand_sweep(base, [SweepAxis(path="model.hidden.0.init.bias", values=[0.5]),
                                  SweepAxis(path="model.init.std", values=[0.2, 0.8])])
    assert [m.spec.model.hidden[0].init.model_dump() for m in members] == [  # type: ignore[union-attr]
        {"scheme": "normal", "std": s, "bias": 0.5} for s in (0.2, 0.8)]
    assert members[1].spec.model.hidden[1].init is None
    # a kind the path implies keeps the member's own values that kind has (bias here)
    base = {**DATA_ONLY, "model": {"init": {"scheme": "he_normal", "bias": 0.25}}}
    (member,) = expand_sweep(base, [SweepAxis(path="model.hidden.0.init.std", values=[0.4])])
    assert member.spec.model.hidden[0].init.model_dump() == {  # type: ignore[union-attr]
        "scheme": "normal", "std": 0.4, "bias": 0.25}


def test_an_ambiguous_left_out_object_is_an_error_naming_the_axis_and_the_field_to_add() -> None:
    for path, add, kinds in (("clipping.max_norm", "clipping.mode", "global_norm, layer_norm"),
                             ("optimizer.beta1", "optimizer.name", "adam, adamw"),
                             ("schedule.gamma", "schedule.name", "step, exponential")):
        with pytest.raises(SweepError) as info:
            expand_sweep(DATA_ONLY, [SweepAxis(path="seed", values=[0]),
                                     SweepAxis(path=path, values=[1.0])])
        assert f"axis {path!r}" in str(info.value) and f"add `{add}`" in str(info.value)
        assert kinds in str(info.value) and info.value.loc == ("axes", 1, "path")
    with pytest.raises(SweepError, match="no optimizer name has `nope`") as info:
        expand_sweep(DATA_ONLY, [SweepAxis(path="optimizer.nope", values=[1])])
    assert info.value.loc == ("axes", 0, "path")
    with pytest.raises(SweepError, match="add `data` to the base spec"):
        expand_sweep({}, [SweepAxis(path="data.noise", values=[0.1])])


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
