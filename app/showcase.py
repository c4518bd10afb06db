"""Specs that show what gradwatch is for, shared by the docs' examples, the tests and the README.

``DIVERGING_SPEC`` trains normally for about twenty steps, then its gradient norms climb by
orders of magnitude per step until they overflow to Infinity at step 25: targets ~1e2 with a
learning rate meant for unit targets, no clipping, and the monitor told not to stop early so
the whole climb (and the Inf) is recorded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DIVERGING_SPEC"]

DIVERGING_SPEC: dict[str, Any] = {
    "name": "regression-targets-x100",
    "seed": 0,
    "data": {"source": "synthetic", "name": "linear", "n_samples": 320, "n_features": 8,
             "target_scale": 100.0},
    "model": {"hidden": [{"units": 32, "activation": "relu"},
                         {"units": 32, "activation": "relu"}]},
    "optimizer": {"name": "sgd", "lr": 0.0005, "momentum": 0.9},
    "clipping": {"mode": "none"},
    "training": {"epochs": 20, "batch_size": 32},
    "monitor": {"record_every": 1, "stop_on_explosion": False},
}
