"""Provisional diagnoses, computed once per job and point of progress.

A running job's ``/diagnostics`` is rebuilt from its stored records: seconds of CPU on a long
run. Readers asking about the same job at the same point (its steps completed and its
latest event id) share one computation — concurrent ones wait for it (single flight) — and
the result is kept until the job moves on. Bounded: the least recently used entries go.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["PROVISIONAL", "SingleFlightCache"]


class SingleFlightCache:
    """A small LRU cache whose misses are computed once, however many callers wait."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.computed = 0  # how many times a value was computed (misses)
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            flight = self._locks.setdefault(key, threading.Lock())
        with flight:
            with self._lock:
                if key in self._values:  # another caller computed it while we waited
                    return self._values[key]
            value = compute()
            with self._lock:
                self.computed += 1
                self._values[key] = value
                while len(self._values) > self.size:
                    self._values.popitem(last=False)
                self._locks.pop(key, None)
            return value


PROVISIONAL = SingleFlightCache()
