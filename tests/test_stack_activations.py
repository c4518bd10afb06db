"""The stack's activation statistics stay every member's own bits.

For random architectures (2-3 hidden layers, one unit or many, widths that make the hidden
work arrays batch-major or not), stack sizes, batches, dtypes and member scales (float32
overflow at every stage), each member's statistics from the stack equal, bit for bit, those
of its own network on the same batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.network import MLP
from core.spec import TrainingSpec
from core.stacked import StackedMLP

WIDTHS = [1, 2, 3, 4, 5, 8, 12, 16, 32]
ALIGNED = [4, 8, 12, 16, 32]  # batch-major work arrays
ACTIVATIONS = ["relu", "relu", "tanh", "leaky_relu", "sigmoid"]
SCALES = [1.0, 1.0, 1e6, 4e8, 1e19, 1e30]


def _hex(a: np.ndarray) -> list[str]:
    return [float(v).hex() for v in np.asarray(a, dtype=np.float64).ravel().tolist()]


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    n_hidden = draw(st.integers(2, 3))
    widths = ALIGNED if draw(st.booleans()) else WIDTHS
    return {
        "hidden": [{"units": draw(st.sampled_from(widths)),
                    "activation": draw(st.sampled_from(ACTIVATIONS))} for _ in range(n_hidden)],
        "members": draw(st.integers(1, 12)),
        "batch": draw(st.integers(1, 40)),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "scales": draw(st.lists(st.sampled_from(SCALES), min_size=12, max_size=12)),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=60, deadline=None)
@given(stacks())
@example({  # a layout whose batch-major columns BLAS would sum in another order
    "hidden": [{"units": 12, "activation": "relu"}, {"units": 12, "activation": "relu"}],
    "members": 4, "batch": 35, "dtype": "float32", "scales": [1.0] * 12, "seed": 0})
def test_hidden_statistics_of_any_layout_are_each_members_networks(case: dict[str, Any]
                                                                   ) -> None:
    spec = TrainingSpec.model_validate({
        "seed": 0, "dtype": case["dtype"],
        "data": {"source": "synthetic", "name": "blobs", "n_samples": 64, "n_features": 3},
        "model": {"hidden": case["hidden"], "init": {"scheme": "normal", "std": 0.7}}})
    nets = [MLP(spec, np.random.default_rng(case["seed"] + k)) for k in range(case["members"])]
    with np.errstate(over="ignore"):
        for net, scale in zip(nets, case["scales"], strict=False):
            net.W[0][...] *= scale
    stack = StackedMLP(nets)
    X = np.random.default_rng(case["seed"]).standard_normal((case["batch"], 3)).astype(
        case["dtype"])
    with np.errstate(all="ignore"):
        out = stack.forward(X)
        got = np.stack(stack.activation_stats(out), axis=2)
        for k, net in enumerate(nets):
            assert _hex(got[k]) == _hex(net.activation_stat_array(net.forward(X))), f"member {k}"

