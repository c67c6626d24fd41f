"""Download speed limits: a pure token bucket plus a thin asyncio shell.

The bucket is debt-based: a reservation always succeeds and returns how long the caller must wait
before using the bytes. A read larger than the burst therefore never deadlocks; it just pushes the
bucket into debt that later readers queue behind. The bucket never reads a clock itself; callers
pass ``now`` (seconds on any monotonic scale), so tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

__all__ = ["DEFAULT_MIN_BURST", "AsyncRateLimiter", "TokenBucket", "default_burst"]

DEFAULT_MIN_BURST = 64 * 1024
"""Smallest default burst: one typical socket read, so slow limits still move whole reads."""


def default_burst(rate: float | None) -> float:
    """A quarter second of traffic, but never less than one 64 KiB read."""
    if rate is None:
        return float(DEFAULT_MIN_BURST)
    return max(rate * 0.25, float(DEFAULT_MIN_BURST))


def _check_rate(rate: float | None) -> float | None:
    if rate is None:
        return None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be a positive finite number of bytes/s or None, got {rate!r}")
    return float(rate)


def _check_burst(burst: float | None) -> float | None:
    if burst is None:
        return None
    if not math.isfinite(burst) or burst <= 0:
        raise ValueError(f"burst must be a positive finite number of bytes or None, got {burst!r}")
    return float(burst)


class TokenBucket:
    """Token bucket in bytes; ``rate=None`` means unlimited.

    The bucket starts empty, so a fresh limit is exact from the first byte; burst credit only
    accrues while the link is idle. Every reservation also gets a *ticket* (a point on the
    cumulative-credit axis) so a waiter can recompute its remaining wait after a live rate change
    instead of sleeping out a delay computed for the old rate.
    """

    def __init__(self, rate: float | None, burst: float | None = None, now: float = 0.0) -> None:
        self._rate = _check_rate(rate)
        self._fixed_burst = _check_burst(burst)
        self._burst = self._fixed_burst if self._fixed_burst is not None else default_burst(rate)
        self._tokens = 0.0  # may go negative: that is the debt readers queue behind
        self._credited = 0.0  # total credit ever added; tickets are positions on this axis
        self._last = float(now)

    @property
    def rate(self) -> float | None:
        """Current limit in bytes/s (None = unlimited)."""
        return self._rate

    @property
    def burst(self) -> float:
        """Largest credit the bucket saves up while idle."""
        return self._burst

    def _advance(self, now: float) -> None:
        # A clock that steps backwards (or equal timestamps) simply adds no credit.
        elapsed = now - self._last
        if elapsed <= 0:
            return
        self._last = now
        if self._rate is None:
            return
        gain = elapsed * self._rate
        self._credited += gain
        # Capping only bites once all debt is repaid, so no pending ticket loses credit.
        self._tokens = min(self._burst, self._tokens + gain)

    def set_rate(self, rate: float | None, now: float) -> None:
        """Change the limit live: credit up to ``now`` accrues at the old rate, debt is kept.

        Switching to unlimited forgives the debt (releasing every waiter); switching from
        unlimited starts an empty bucket.
        """
        new_rate = _check_rate(rate)
        self._advance(now)
        if new_rate is None and self._rate is not None and self._tokens < 0:
            self._credited += -self._tokens
        if new_rate is None or self._rate is None:
            self._tokens = 0.0
        self._rate = new_rate
        self._burst = self._fixed_burst if self._fixed_burst is not None else default_burst(rate)
        self._tokens = min(self._tokens, self._burst)

    def reserve_ticket(self, n: int, now: float) -> float:
        """Take ``n`` bytes of credit now; return the ticket to pass to :meth:`delay_for`."""
        if n < 0:
            raise ValueError(f"cannot reserve a negative byte count ({n})")
        self._advance(now)
        if self._rate is None or n == 0:
            return self._credited
        self._tokens -= n
        return self._credited + max(0.0, -self._tokens)

    def delay_for(self, ticket: float, now: float) -> float:
        """Seconds from ``now`` until the reservation behind ``ticket`` is paid for."""
        self._advance(now)
        if self._rate is None:
            return 0.0
        return max(0.0, (ticket - self._credited) / self._rate)

    def reserve(self, n: int, now: float) -> float:
        """Reserve ``n`` bytes; return the seconds to wait before using them (0 if none)."""
        return self.delay_for(self.reserve_ticket(n, now), now)

    def available(self, now: float) -> float:
        """Bytes usable right now without waiting; negative means debt, inf means unlimited."""
        self._advance(now)
        if self._rate is None:
            return math.inf
        return self._tokens


def _release(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncRateLimiter:
    """One global bucket plus optional per-task buckets, for asyncio fetchers.

    ``consume`` is called per read; it charges both buckets and waits for the slower one. Waiters
    are woken on every limit change and re-check their tickets, so lifting a limit takes effect
    at once instead of after an already-computed long sleep. Bytes are charged at reservation
    time, even if the waiter is cancelled (the bytes were usually already read).
    """

    def __init__(self, rate: float | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._global = TokenBucket(rate, now=clock())
        self._tasks: dict[str, TokenBucket] = {}
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def global_rate(self) -> float | None:
        """Current global limit in bytes/s (None = unlimited)."""
        return self._global.rate

    def task_rate(self, key: str) -> float | None:
        """Current limit of one task (None = no per-task limit)."""
        bucket = self._tasks.get(key)
        return None if bucket is None else bucket.rate

    def set_global(self, rate: float | None) -> None:
        """Change the global limit; waiting readers re-check immediately."""
        self._global.set_rate(rate, self._clock())
        self._wake()

    def set_task(self, key: str, rate: float | None) -> None:
        """Limit one task (``None`` removes its limit); waiting readers re-check immediately."""
        if rate is None:
            self.remove_task(key)
            return
        now = self._clock()
        bucket = self._tasks.get(key)
        if bucket is None:
            self._tasks[key] = TokenBucket(rate, now=now)
        else:
            bucket.set_rate(rate, now)
        self._wake()

    def remove_task(self, key: str) -> None:
        """Drop a task's limit (e.g. task finished); its waiters are released from it."""
        bucket = self._tasks.pop(key, None)
        if bucket is not None:
            bucket.set_rate(None, self._clock())  # forgive debt so current waiters see no delay
            self._wake()

    def limited(self, key: str | None = None) -> bool:
        """Whether any bucket that ``consume(n, key)`` would charge has a finite rate."""
        return any(bucket.rate is not None for bucket in self._buckets(key))

    def reserve(self, n: int, key: str | None = None) -> float:
        """Charge ``n`` bytes without waiting; return the delay ``consume`` would sleep.

        For callers that schedule their own waiting (and for fake-clock simulations).
        """
        now = self._clock()
        return max(bucket.reserve(n, now) for bucket in self._buckets(key))

    async def consume(self, n: int, key: str | None = None) -> None:
        """Charge ``n`` bytes to the global and (if limited) the task bucket, then wait."""
        now = self._clock()
        tickets = [(bucket, bucket.reserve_ticket(n, now)) for bucket in self._buckets(key)]
        while True:
            now = self._clock()
            wait = max(bucket.delay_for(ticket, now) for bucket, ticket in tickets)
            if wait <= 0:
                return
            await self._sleep(wait)

    def _buckets(self, key: str | None) -> list[TokenBucket]:
        task = self._tasks.get(key) if key is not None else None
        return [self._global] if task is None else [self._global, task]

    async def _sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _release, fut)
        self._waiters.add(fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiters.discard(fut)

    def _wake(self) -> None:
        for fut in list(self._waiters):
            _release(fut)
