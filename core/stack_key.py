"""Which specs can share a stack: the part of a spec every member of one stacked run must agree on.

:func:`stack_key` reduces a spec to what :class:`core.batched.BatchedTrainer` needs identical
across its members (architecture, dtype, loss, data shape, batch size, optimizer settings other
than the learning rate, clipping mode, recorded statistics) as one JSON string, so specs group by
equality; :func:`core.batched.train_specs` and the service's sweep worker group by it.
:mod:`core.batched` re-exports it.
"""

from __future__ import annotations

import json

from core.spec import TrainingSpec, data_shape

__all__ = ["stack_key"]


def stack_key(spec: TrainingSpec) -> str:
    """What members of one stack must share: architecture, dtype, loss, data shape, batch
    size, optimizer (all but ``lr``), clipping mode and which statistics are recorded.

    Learning rate, schedule, initialisation, clipping thresholds, seed (hence data, weights
    and batch order), epochs, early stopping and monitor settings may differ per member.
    """
    shape = data_shape(spec.data)
    optimizer = spec.optimizer.model_dump()
    optimizer.pop("lr")
    return json.dumps({
        "dtype": spec.dtype,
        "sizes": spec.layer_sizes(),
        "hidden": [[h.activation, h.batch_norm] for h in spec.model.hidden],
        "loss": spec.loss,
        "task": shape.task,
        "n_train": spec.n_train_samples(),
        "n_samples": shape.n_samples,
        "batch_size": spec.training.batch_size,
        "optimizer": optimizer,
        "clipping": spec.clipping.mode,
        "activation_stats": spec.monitor.activation_stats,
    }, sort_keys=True)
