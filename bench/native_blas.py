"""Benchmark NumPy's native OpenBLAS kernel: import this module before NumPy.

Some machines set ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` for old OpenBLAS builds; they force
a slower kernel on a current NumPy. Importing this module re-executes the script once without
both variables (for this command alone), unless ``--keep-openblas-env`` is on the command line.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("OPENBLAS_CORETYPE") and "--keep-openblas-env" not in sys.argv:
    _env = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, *sys.argv], _env)
