"""The stacked loss helpers give each member exactly what the single functions give it."""

from __future__ import annotations

import numpy as np
import pytest

from core.losses import accuracy, accuracy_batched


@pytest.mark.parametrize("n", [1, 32, 255, 256, 300])  # a row's count in one byte, and not
@pytest.mark.parametrize("shared", [True, False])
def test_binary_accuracy_of_each_member_is_its_single_accuracy(n: int, shared: bool) -> None:
    rng = np.random.default_rng(n)
    K = 5
    out = rng.standard_normal((K, n, 1)).astype(np.float32)
    y = (rng.random((n, 1)) > 0.5).astype(np.float32)
    targets = y if shared else (rng.random((K, n, 1)) > 0.5).astype(np.float32)
    first = targets if shared else targets[0]
    out[0] = np.where(first > 0.5, 1.0, -1.0)  # every example right: a count of n
    out[1] = -out[0]  # every example wrong
    out[2, :, 0] = np.nan  # NaN is not > 0
    got = accuracy_batched(out, targets, "binary_cross_entropy")
    assert got is not None and got.dtype == np.float64
    for k in range(K):
        own = accuracy(out[k], targets if shared else targets[k], "binary_cross_entropy")
        assert own is not None
        assert got[k].hex() == float(own).hex(), k
