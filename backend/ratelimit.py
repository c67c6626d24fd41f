"""Token bucket per key (user) for CDN-token generation: in process memory (``RateLimiter``, the
embedded default) or in Redis (``RedisRateLimiter``, shared by every worker of the scaled
stack)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from backend.errors import ServiceUnavailable


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

    async def acheck(self, key: str) -> float:
        return self.check(key)  # memory: nothing to wait for

    def _prune(self, now: float) -> None:
        full_after = self.capacity / self.rate if self.rate > 0 else float("inf")
        for k in [k for k, b in self._buckets.items() if now - b.updated > full_after]:
            del self._buckets[k]


class Limiter(Protocol):
    def check(self, key: str) -> float: ...
    async def acheck(self, key: str) -> float: ...


# The same refill-then-take step as ``take``, run atomically inside Redis so every worker (and
# host) draws from one bucket per key. The clock is Redis's own (TIME), so workers with skewed
# clocks still agree; the key expires once the bucket would be full again (no cleanup job).
_TAKE_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or capacity
local ts = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
elseif rate > 0 then
  wait = (1 - tokens) / rate
else
  wait = -1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local ttl = 3600000
if rate > 0 then ttl = math.ceil(capacity / rate * 1000) + 1000 end
redis.call('PEXPIRE', KEYS[1], ttl)
return tostring(wait)
"""


class RedisRateLimiter:
    """Token buckets in Redis (one hash per key, updated by one Lua script: atomic, one round
    trip). Redis unreachable: ``ServiceUnavailable`` (503), never an unlimited pass."""

    def __init__(self, client: Any, capacity: float, rate: float,
                 prefix: str = "launcher:rl:cdn:", url: str | None = None) -> None:
        self.client = client
        self.capacity = capacity
        self.rate = rate
        self.prefix = prefix
        self.url = url  # for the asyncio client of each event loop (``acheck``)
        self._script = client.register_script(_TAKE_LUA)
        self._ascripts: dict[tuple[int, int], Any] = {}

    def _args(self) -> list[str]:
        return [repr(float(self.capacity)), repr(float(self.rate))]

    def check(self, key: str) -> float:
        import redis

        try:
            wait = float(self._script(keys=[self.prefix + key], args=self._args()))
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"rate limiter store (Redis) unreachable: {exc}") from exc
        return float("inf") if wait < 0 else wait

    async def acheck(self, key: str) -> float:
        """``check`` on this event loop's asyncio Redis client (no thread hop)."""
        import asyncio
        import os

        import redis
        import redis.asyncio

        if self.url is None:
            return self.check(key)
        loop_key = (os.getpid(), id(asyncio.get_running_loop()))
        script = self._ascripts.get(loop_key)
        if script is None:
            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=2,
                                                  socket_connect_timeout=1)
            script = self._ascripts[loop_key] = client.register_script(_TAKE_LUA)
        try:
            wait = float(await script(keys=[self.prefix + key], args=self._args()))
        except (redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(f"rate limiter store (Redis) unreachable: {exc}") from exc
        return float("inf") if wait < 0 else wait
