"""Preflight's explosion prediction on measured cases (its calibration data).

Each case is one member of the calibration sweeps of ``bench/preflight_calibration.py``
(spirals, 32-unit hidden layers, ``normal`` init, SGD momentum 0.9, 20 epochs, seed 0) with
the verdict its trained run was diagnosed with. Preflight reads only the spec (analysis plus
one probe batch), so the test needs no training: it checks that preflight predicts an
explosion (risk ``high``/``critical`` from an explosion finding) exactly for the cases that
exploded. The six healthy cases were predicted to explode before the calibration (gradient
amplification 30-1e3 or activations growing >= 2x per layer read as "high", first update
ratios from 0.25 "high"); over all 216 measured runs agreement went from 76.9 % to 93.5 %.
"""

from __future__ import annotations

from typing import Any

import pytest

from core import TrainingSpec
from core.stability import EXPLODING_RISKS, predicted_risk
from core.sweep import SweepMember

# (activation, depth, init std, lr, measured verdict); comments: first update ratio on the
# probe batch and predicted depth gain
CASES = [
    ("relu", 2, 0.54928, 0.0630957, "healthy"),  # ratio 0.019, gain 2.0 (fwd growth 2x)
    ("relu", 2, 1.0, 0.251189, "healthy"),  # ratio 0.16, gain 3.7
    ("relu", 4, 1.0, 0.001, "healthy"),  # ratio 0.010, gain 51
    ("tanh", 8, 0.54928, 0.0158489, "healthy"),  # ratio 0.017, gain 40
    ("tanh", 8, 1.0, 0.00398107, "healthy"),  # ratio 0.012, gain 520
    ("tanh", 2, 0.54928, 0.251189, "healthy"),  # ratio 0.087, gain 2.9
    ("relu", 2, 1.0, 1.0, "exploding"),  # ratio 0.64, gain 3.7
    ("relu", 4, 0.54928, 0.251189, "exploding"),  # ratio 0.43, gain 8.5
    ("relu", 8, 0.54928, 0.00398107, "exploding"),  # ratio 0.50, gain 146
    ("relu", 8, 1.0, 0.001, "exploding"),  # ratio 8.3, gain 9.7e3
    ("relu", 4, 1.0, 0.0630957, "exploding"),  # ratio 0.65, gain 51
    ("relu", 8, 0.301709, 1.0, "exploding"),  # ratio 1.5, gain 2.2
]


def spec(activation: str, depth: int, std: float, lr: float) -> TrainingSpec:
    body: dict[str, Any] = {
        "seed": 0,
        "data": {"source": "synthetic", "name": "spirals", "n_samples": 600},
        "model": {"hidden": [{"units": 32, "activation": activation}] * depth,
                  "init": {"scheme": "normal", "std": std}},
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "training": {"epochs": 20, "batch_size": 32},
    }
    return TrainingSpec.model_validate(body)


@pytest.mark.parametrize(("activation", "depth", "std", "lr", "verdict"), CASES)
def test_preflight_predicts_the_measured_verdict(activation: str, depth: int, std: float,
                                                 lr: float, verdict: str) -> None:
    risk = predicted_risk(SweepMember(0, {}, spec(activation, depth, std, lr)))
    assert (risk in EXPLODING_RISKS) == (verdict == "exploding"), risk


def test_a_large_depth_gain_alone_is_reported_but_not_predicted_to_explode() -> None:
    from core import preflight

    report = preflight(spec("relu", 4, 1.0, 0.001))
    kinds = {f.kind for f in report.risks}
    assert "depth_amplification" in kinds  # still reported, with its evidence
    assert report.predicted_depth_gain > 30
    assert report.risk in ("low", "medium")
