"""Working example bodies for Swagger UI: one spec that explodes and one that does not."""

from __future__ import annotations

from typing import Any

EXPLODING_SPEC: dict[str, Any] = {
    "name": "deep-relu-normal-init",
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 300, "n_classes": 3},
    "model": {
        "hidden": [{"units": 64, "activation": "relu"}] * 6,
        "init": {"scheme": "normal", "std": 1.0},
    },
    # With He initialisation (the top recommended fix) this learning rate trains healthily,
    # so the repair job shows the fix working.
    "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
    "clipping": {"mode": "none"},
    "training": {"epochs": 10, "batch_size": 32},
    "monitor": {"record_every": 1, "stop_on_explosion": True},
}

HEALTHY_SPEC: dict[str, Any] = {
    "name": "spirals-he-init-adam",
    "seed": 0,
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 300, "n_classes": 3},
    "model": {
        "hidden": [{"units": 32, "activation": "relu"}, {"units": 32, "activation": "relu"}],
        "init": {"scheme": "he_normal"},
    },
    "optimizer": {"name": "adam", "lr": 0.01},
    "clipping": {"mode": "global_norm", "max_norm": 5.0},
    "training": {"epochs": 10, "batch_size": 32},
}

MINIMAL_SPEC: dict[str, Any] = {"data": {"source": "synthetic", "name": "spirals"}}

SPEC_EXAMPLES: dict[str, Any] = {
    "explodes": {
        "summary": "A spec that explodes",
        "description": "Six ReLU layers initialised with N(0, 1) (no fan-in scaling), SGD with "
                       "momentum and no clipping: gradient norms grow by orders of magnitude "
                       "within a few steps; the diagnosis says where and recommends a fix.",
        "value": EXPLODING_SPEC,
    },
    "healthy": {
        "summary": "A spec that trains fine",
        "description": "He initialisation, Adam and global-norm clipping on the same data.",
        "value": HEALTHY_SPEC,
    },
    "minimal": {
        "summary": "The smallest complete spec",
        "description": "Everything else takes its default (see the echoed `spec`).",
        "value": MINIMAL_SPEC,
    },
}
