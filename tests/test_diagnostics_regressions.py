"""Diagnosis regressions: histories that made ``diagnose`` (or the live monitor) raise, and a
merge patch whose key order depended on the process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_settings
from test_diagnostics import History, record

from app.run_end import conclude
from core import Trainer
from core.batched_monitor import StackMonitor
from core.diagnostics import Finding, Monitor, create_merge_patch, diagnose
from core.spec import TrainingSpec
from core.training_result import TrainingResult

# member 27 of bench/sweep_speed.py's large sweep: its float32 cross-entropy reaches -0.0
# (saturated softmax) at step 10 and the gradient norm exactly 0 at step 14
SWEEP_LARGE_27: dict[str, Any] = {
    "seed": 0, "dtype": "float32",
    "data": {"source": "synthetic", "name": "blobs", "n_samples": 2048, "n_features": 784,
             "n_classes": 10, "noise": 4.0},
    "model": {"hidden": [{"units": 256}, {"units": 256}],
              "init": {"scheme": "normal", "std": 0.07196856730011521}},
    "optimizer": {"name": "sgd", "lr": 0.030916820425413917, "momentum": 0.9},
    "training": {"epochs": 100, "batch_size": 128, "max_steps": 40},
}
F32_CE = {"dtype": "float32", "data": {"source": "synthetic", "name": "spirals", "n_samples": 320},
          "model": {"hidden": [{"units": 16}, {"units": 16}]}}


def _no_bare_constant(name: str) -> None:
    raise AssertionError(f"bare {name} in the report's JSON")


# --------------------------------------------------------- forecast across an exact zero
@pytest.fixture(scope="module")
def zero_loss_run() -> TrainingResult:
    # On this machine's OpenBLAS the float32 loss of this member reaches exactly 0 (a
    # saturated softmax); another BLAS may round differently, so that is not asserted here:
    # the crafted histories below exercise the zero itself on any machine.
    return Trainer(TrainingSpec.model_validate(SWEEP_LARGE_27)).run(keep_records=True)


def test_diagnose_reports_a_run_whose_float32_loss_reached_exactly_zero(
        zero_loss_run: TrainingResult) -> None:
    report = diagnose(zero_loss_run)
    assert report.steps_analyzed == 40
    json.loads(report.model_dump_json(), parse_constant=_no_bare_constant)


def test_a_run_whose_loss_reached_zero_is_not_failed_by_its_diagnosis(
        zero_loss_run: TrainingResult, tmp_path: Path) -> None:
    status, error, report = conclude("job", zero_loss_run, make_settings(tmp_path))
    assert (status, error) == ("succeeded", None)
    assert report is not None and report["steps_analyzed"] == 40


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_no_growth_rate_is_measured_from_a_zero_loss(loss: str) -> None:
    """The loss back from exactly 0 (log 0 stood in by -745) is not growth of e^745 per step
    (for the MSE's RMS error, e^372: finite, but a forecast of overflow within a step)."""
    data = F32_CE["data"] if loss == "cross_entropy" else {"source": "synthetic", "name": "sine"}
    spec = TrainingSpec.model_validate({**F32_CE, "data": data, "loss": loss})
    steps = [record(t, 10.0, 2.0) for t in range(5)]
    steps += [record(5, 0.0, 0.0), record(6, 0.0, 0.0), record(7, 1e-10, 0.0), record(8, 9.0, 0.3)]
    mon = Monitor(spec)
    for r in steps:
        mon.observe(r)
    fc = mon.forecaster.forecast(8)
    assert fc is None or fc.series != "loss"
    assert diagnose(History(spec, steps)).steps_analyzed == 9  # its replay forecasts at step 8


def test_live_monitor_confirms_an_explosion_right_after_a_zero_loss() -> None:
    spec = TrainingSpec.model_validate(F32_CE)
    mon = Monitor(spec)
    for t in range(8):
        assert mon.observe(record(t, 10.0, 2.0)) == []
    mon.observe(record(8, 10.0, 0.0))
    alerts = mon.observe(record(9, 1e20, 5.0))  # past sqrt(float32 max): on course to overflow
    assert [a.kind for a in alerts] == ["gradient_explosion"]
    assert alerts[0].evidence["rule"] == "overflow_course"


def test_a_sweep_confirms_an_explosion_right_after_a_zero_loss() -> None:
    """The stack's monitor (a sweep's live monitor) replays the step through the same forecast."""
    specs = [TrainingSpec.model_validate(F32_CE)] * 2
    stack = StackMonitor(specs)
    got: dict[int, list[Finding]] = {}
    for t in range(10):
        recs = [record(t, 1e20 if t == 9 else 10.0, 5.0 if t == 9 else 0.0 if t == 8 else 2.0),
                record(t, 10.0, 2.0)]
        cols = [np.array([[x.grad_norm, x.weight_norm, x.update_norm, x.act_std or 0.0]
                          for x in r.layers]) for r in recs]
        got = stack.observe(t, np.array([r.loss for r in recs]),
                            np.array([r.grad_norm for r in recs]),
                            *(np.stack([c[:, j] for c in cols]) for j in range(4)),
                            record=recs.__getitem__)
    assert list(got) == [0]
    assert [a.evidence["rule"] for a in got[0]] == ["overflow_course"]


def test_growth_beyond_float_range_is_forecast_as_infinite_not_raised() -> None:
    spec = TrainingSpec.model_validate({**F32_CE, "dtype": "float64"})
    steps = [record(t, 1e-300, 2.0) for t in range(3)] + [record(3, 1e-200, 2.0),
                                                           record(4, 1e150, 2.0)]
    mon = Monitor(spec)
    for r in steps:
        mon.observe(r)
    fc = mon.forecaster.forecast(4)
    assert fc is not None and fc.growth_per_step == math.inf
    assert "Infinity" in fc.model_dump_json()


# ------------------------------------------------------------ repeated steps
def test_a_history_with_repeated_steps_is_diagnosed_as_its_deduplicated_version() -> None:
    """A step written twice (a sink retry): the later record is kept, as in the columns."""
    spec = TrainingSpec.model_validate({"data": F32_CE["data"], "model": F32_CE["model"]})
    steps = [record(t, 1.5 ** max(0, t - 20), 1.0 + 0.01 * t) for t in range(40)]
    stale = [record(12, 50.0, 9.0), record(30, 1e-3, 0.5)]  # written first, then again
    with_dups = [*steps[:12], stale[0], *steps[12:30], stale[1], *steps[30:]]
    expected = diagnose(History(spec, steps)).model_dump_json()
    assert diagnose(History(spec, with_dups)).model_dump_json() == expected
    out_of_order = with_dups[-5:] + with_dups[:-5]  # each stale record still before its retry
    assert diagnose(History(spec, out_of_order)).model_dump_json() == expected


# ------------------------------------------------------------ merge patch key order
def test_create_merge_patch_lists_removed_keys_in_the_source_order() -> None:
    source = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "dampening": 0.0,
              "weight_decay": 0.0}
    target = {"name": "adam", "lr": 0.001, "weight_decay": 0.0}
    assert list(create_merge_patch(source, target)) == ["momentum", "nesterov", "dampening",
                                                        "name", "lr"]


_PATCH_ORDER = ("import json; from core.diagnostics import create_merge_patch; "
                "s = {k: 1 for k in 'abcdefghijklmnop'}; t = {'a': 2}; "
                "print(json.dumps(list(create_merge_patch(s, t))))")


def test_create_merge_patch_order_is_the_same_in_every_process() -> None:
    outs = set()
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", _PATCH_ORDER], env=env, check=True,
                                capture_output=True, text=True,
                                cwd=Path(__file__).parent.parent).stdout)
    assert outs == {json.dumps([*"bcdefghijklmnop", "a"]) + "\n"}
