"""core.monitor_math: the stack monitor's elementwise math is the scalar monitor's, bit for bit.

Logs and exps through :mod:`math` (NumPy's differ in the last bit for some inputs) and the
setback test's count in place of the scalar state's sorted median.
"""

from __future__ import annotations

import math

import numpy as np

from core.diagnostics.monitor import HARM, RECENT
from core.diagnostics.series import safe_log
from core.monitor_math import exp_each, log_each, setback_rows


def test_logs_and_exps_of_a_stack_are_the_scalar_monitors_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf, 5e-324, 1.0, 1e300]
    # inputs whose log NumPy 2.4's AVX-512 loop rounds the other way than the C library's
    numpy_differs = [2.21972857392358, 1.8031217207650927, 1.0017749917162757,
                     1.1566536572125032, 1.015870935561214, 0.9850643366496479]
    for v in (np.exp(rng.uniform(-700, 700, 2000)), np.array(special + numpy_differs),
              np.concatenate((rng.uniform(0.5, 2.0, 500), [0.0]))):  # all > 0, and not
        assert repr(log_each(v).tolist()) == repr([safe_log(x) for x in v.tolist()])
    x = np.concatenate((rng.uniform(-745.0, 709.0, 2000), [710.0, -np.inf, np.nan]))
    want = [math.exp(v) if v < 709.8 or v != v else math.inf for v in x.tolist()]
    assert repr(exp_each(x).tolist()) == repr(want)


def test_setback_rows_is_the_scalar_states_median_test() -> None:
    # per column: the median of RECENT losses against the two levels, the scalar state's
    # sort and comparisons; losses on a level exactly, NaN levels, a strided window (the
    # history's)
    rng = np.random.default_rng(5)
    K = 300
    best = rng.uniform(0.01, 1.0, K)
    l0 = best * rng.uniform(0.5, 6.0, K)
    l0[:5], best[5:8] = math.nan, math.nan
    level = np.maximum(2.0 * best, best + HARM * np.maximum(l0 - best, 0.0))
    hist = np.full((RECENT + 3, 2, K), math.nan)
    window = hist[2:2 + RECENT, 1]
    window[:] = level * rng.choice([0.5, 1.0, 1.5], (RECENT, K), p=[0.45, 0.1, 0.45])
    window[:, 8:20] = level[8:20] * (np.arange(RECENT)[:, None] >= RECENT // 2)  # at the median
    want = []
    for k in range(K):
        twice = 2.0 * float(best[k])
        halfway = float(best[k]) + HARM * max(float(l0[k]) - float(best[k]), 0.0)
        med = sorted(window[:, k].tolist())[RECENT // 2]
        want.append(med >= twice and med >= halfway)
    assert 20 < sum(want) < K - 20
    assert setback_rows(window, best.copy(), l0).tolist() == want
