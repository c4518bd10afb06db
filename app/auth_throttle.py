"""Failed-authentication throttling, per API process: a flood of wrong keys cannot make the
process hash without limit.

Two counters, each a fixed window that opens at its first failure: one per tenant key id
(``GRADWATCH_AUTH_MAX_FAILURES`` wrong secrets for a real key id within
``GRADWATCH_AUTH_FAILURE_WINDOW_SECONDS``) and one per client address
(``GRADWATCH_AUTH_MAX_ADDRESS_FAILURES`` failed authentications of any kind). Once a counter
is full, requests it covers are refused (429 with ``Retry-After``, by :mod:`app.deps`) without
hashing anything until its window closes; then the next attempt is tried again. A success
never clears another key id's or address's counter.

An attempt is counted *before* the work it guards (:meth:`AuthThrottle.attempt`) and handed
back when it succeeds or fails without deciding anything, e.g. the database is down
(:meth:`AuthThrottle.release`), so concurrent requests cannot get
more scrypt hashes through than the limit. Each counter table holds at most ``max_entries``
names: when full, expired windows are dropped first, then the least recently failed names,
so an attacker cycling random key ids or addresses cannot grow the process's memory.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["AuthThrottle", "AuthThrottled", "Scope"]

log = logging.getLogger(__name__)

Scope = Literal["key", "address"]
MAX_ENTRIES = 10_000


class AuthThrottled(Exception):
    """Too many failed authentications for a key id or an address: retry after ``retry_after``
    seconds (a whole number, at least 1)."""

    def __init__(self, scope: Scope, retry_after: int, limit: int, window: float) -> None:
        super().__init__(f"{scope} throttled for {retry_after} s")
        self.scope, self.retry_after, self.limit, self.window = scope, retry_after, limit, window


@dataclass(slots=True)
class _Window:
    opened: float  # monotonic time of the window's first failure
    failures: int


class _Counter:
    """Failures per name in fixed windows; at most ``max_entries`` names."""

    def __init__(self, scope: Scope, limit: int, window: float, max_entries: int) -> None:
        self.scope, self.limit, self.window, self.max_entries = scope, limit, window, max_entries
        self.windows: OrderedDict[str, _Window] = OrderedDict()

    def attempt(self, name: str, now: float) -> None:
        """Count an attempt for ``name``, or raise :class:`AuthThrottled` when its window is
        full (nothing counted then)."""
        current = self.windows.get(name)
        if current is None or now - current.opened >= self.window:
            self._make_room(now)
            current = self.windows[name] = _Window(now, 0)
        if current.failures >= self.limit:
            wait = current.opened + self.window - now
            raise AuthThrottled(self.scope, max(1, math.ceil(wait)), self.limit, self.window)
        current.failures += 1
        self.windows.move_to_end(name)
        if current.failures == self.limit:
            log.warning("%d failed authentications for %s %s within %g s: refusing it for the "
                        "rest of the window", self.limit, self.scope, name, self.window)

    def release(self, name: str, now: float) -> None:
        """Hand back an attempt that was not a failure."""
        current = self.windows.get(name)
        if current is not None and now - current.opened < self.window and current.failures:
            current.failures -= 1

    def _make_room(self, now: float) -> None:
        if len(self.windows) < self.max_entries:
            return
        expired = [n for n, w in self.windows.items() if now - w.opened >= self.window]
        for name in expired:
            del self.windows[name]
        # down to 90% at once: the scan above runs once per max_entries/10 new names at most
        while len(self.windows) > self.max_entries * 9 // 10:
            self.windows.popitem(last=False)  # the least recently failed name


class AuthThrottle:
    """This process's failed-authentication counters (see the module docstring). A limit of
    0 switches that counter off."""

    def __init__(self, *, max_key_failures: int, max_address_failures: int, window: float,
                 max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._counters: dict[Scope, _Counter] = {}
        if max_key_failures > 0:
            self._counters["key"] = _Counter("key", max_key_failures, window, max_entries)
        if max_address_failures > 0:
            self._counters["address"] = _Counter("address", max_address_failures, window,
                                                 max_entries)
        self._clock = clock
        self._lock = threading.Lock()
        self.throttled: dict[Scope, int] = {"key": 0, "address": 0}

    def attempt(self, scope: Scope, name: str | None) -> None:
        """Count an authentication attempt of ``name`` (a key id, an address) before doing its
        work; raises :class:`AuthThrottled` (and counts the refusal) when ``name`` has used up
        its window."""
        counter = self._counters.get(scope)
        if counter is None or name is None:
            return
        with self._lock:
            try:
                counter.attempt(name, self._clock())
            except AuthThrottled:
                self.throttled[scope] += 1
                raise

    def release(self, scope: Scope, name: str | None) -> None:
        """The attempt counted for ``name`` was not a failure (it succeeded, or an error
        decided nothing): hand it back."""
        counter = self._counters.get(scope)
        if counter is None or name is None:
            return
        with self._lock:
            counter.release(name, self._clock())

    def tracked(self, scope: Scope) -> int:
        """How many names ``scope``'s table holds (bounded by ``max_entries``)."""
        counter = self._counters.get(scope)
        return 0 if counter is None else len(counter.windows)
