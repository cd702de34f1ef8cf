"""A token bucket per API key: `rate_per_s` requests a second on average, bursts of up to `burst`. Used from
the server's event loop only (the interceptor), so no lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import RateLimitedError


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class KeyRateLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s, self.burst = rate_per_s, burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}  # bounded by the number of keys in the key file

    def take(self, key_id: str) -> None:
        """Spends one token of `key_id`'s bucket; RateLimitedError when it is empty."""
        now = self._clock()
        bucket = self._buckets.setdefault(key_id, _Bucket(float(self.burst), now))
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated_at) * self.rate_per_s)
        bucket.updated_at = now
        if bucket.tokens < 1.0:
            retry_after_s = (1.0 - bucket.tokens) / self.rate_per_s
            raise RateLimitedError("requests_per_second_per_key", f"API key {key_id} sent more than "
                                   f"{self.rate_per_s:g} requests per second (bursts of {self.burst}); retry in "
                                   f"{retry_after_s:.2f} s")
        bucket.tokens -= 1.0
