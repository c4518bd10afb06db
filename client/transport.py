"""Retry policy and headers shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx

__all__ = ["NOT_SENT", "RETRYABLE_ERRORS", "Attempt", "Backoff", "auth_headers"]

#: a request that failed with one of these never reached the application, or its answer was
#: lost: resend (GETs, and POSTs that carry an Idempotency-Key)
RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError,
                    httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadTimeout)
#: ... of which these mean the request was never sent: always safe to resend
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass(frozen=True)
class Attempt:
    number: int
    last: bool
    backoff: Backoff

    def delay(self, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(30.0, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return self.backoff.delay(self.number)


@dataclass(frozen=True)
class Backoff:
    """``retries`` resends after the first try, waiting ``base * 2**n`` seconds (at most 8)."""

    retries: int = 5
    base: float = 0.25

    def delay(self, attempt: int) -> float:
        return float(min(8.0, self.base * 2 ** max(0, attempt - 1)))

    def attempts(self) -> Iterator[Attempt]:
        for n in range(1, self.retries + 2):
            yield Attempt(n, n == self.retries + 1, self)
