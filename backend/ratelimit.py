"""Token bucket per key (user) for CDN-token generation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


def take(bucket: Bucket, now: float, capacity: float, rate: float) -> float:
    """Pure step: refill, then take one token. Return 0 when allowed, else seconds to wait."""
    bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
    bucket.updated = now
    if bucket.tokens >= 1.0:
        bucket.tokens -= 1.0
        return 0.0
    return (1.0 - bucket.tokens) / rate if rate > 0 else float("inf")


class RateLimiter:
    def __init__(self, capacity: float, rate: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.capacity = capacity
        self.rate = rate
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """0.0 if the call may proceed, else the seconds until it may (Retry-After)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._prune(now)
                bucket = self._buckets[key] = Bucket(self.capacity, now)
            return take(bucket, now, self.capacity, self.rate)

    def _prune(self, now: float) -> None:
        full_after = self.capacity / self.rate if self.rate > 0 else float("inf")
        for k in [k for k, b in self._buckets.items() if now - b.updated > full_after]:
            del self._buckets[k]
