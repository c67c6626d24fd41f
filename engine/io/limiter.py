"""The shell of the speed limits: one global bucket plus per-task buckets, charged before each
read (the pure bucket is ``engine.core.ratelimit.TokenBucket``). Readers on the event loop await
``consume``; the range client's worker threads call ``pace``, which blocks the calling thread
(its socket is then not read: TCP backpressure throttles the edge)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from engine.core.ratelimit import TokenBucket


def _release(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncRateLimiter:
    """One global bucket plus optional per-task buckets, for asyncio fetchers.

    ``consume`` is called per read; it charges both buckets and waits for the slower one. Waiters
    are woken on every limit change and re-check their tickets, so lifting a limit takes effect
    at once instead of after an already-computed long sleep. Bytes are charged at reservation
    time, even if the waiter is cancelled (the bytes were usually already read).

    Limits are changed on the event loop thread; buckets are read and charged from worker threads
    too, so every bucket operation holds ``_lock`` (a short critical section, never a wait).
    """

    def __init__(self, rate: float | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._global = TokenBucket(rate, now=clock())
        self._tasks: dict[str, TokenBucket] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # worker threads in ``pace`` wait on it

    @property
    def global_rate(self) -> float | None:
        """Current global limit in bytes/s (None = unlimited)."""
        with self._lock:
            return self._global.rate

    def task_rate(self, key: str) -> float | None:
        """Current limit of one task (None = no per-task limit)."""
        with self._lock:
            bucket = self._tasks.get(key)
            return None if bucket is None else bucket.rate

    def set_global(self, rate: float | None) -> None:
        """Change the global limit; waiting readers re-check immediately."""
        with self._lock:
            self._global.set_rate(rate, self._clock())
        self._wake()

    def set_task(self, key: str, rate: float | None) -> None:
        """Limit one task (``None`` removes its limit); waiting readers re-check immediately."""
        if rate is None:
            self.remove_task(key)
            return
        with self._lock:
            now = self._clock()
            bucket = self._tasks.get(key)
            if bucket is None:
                self._tasks[key] = TokenBucket(rate, now=now)
            else:
                bucket.set_rate(rate, now)
        self._wake()

    def remove_task(self, key: str) -> None:
        """Drop a task's limit (e.g. task finished); its waiters are released from it."""
        with self._lock:
            bucket = self._tasks.pop(key, None)
            if bucket is not None:
                bucket.set_rate(None, self._clock())  # forgive debt: current waiters see no delay
        if bucket is not None:
            self._wake()

    def limited(self, key: str | None = None) -> bool:
        """Whether any bucket that ``consume(n, key)`` would charge has a finite rate."""
        with self._lock:
            return any(bucket.rate is not None for bucket in self._buckets(key))

    def rate_for(self, key: str | None = None) -> float | None:
        """The tightest limit ``consume(n, key)`` obeys now in bytes/s (None: unlimited)."""
        with self._lock:
            rates = [bucket.rate for bucket in self._buckets(key) if bucket.rate is not None]
        return min(rates) if rates else None

    def reserve(self, n: int, key: str | None = None) -> float:
        """Charge ``n`` bytes without waiting; return the delay ``consume`` would sleep.

        For callers that schedule their own waiting (and for fake-clock simulations).
        """
        with self._lock:
            now = self._clock()
            return max(bucket.reserve(n, now) for bucket in self._buckets(key))

    async def consume(self, n: int, key: str | None = None) -> None:
        """Charge ``n`` bytes to the global and (if limited) the task bucket, then wait."""
        with self._lock:
            now = self._clock()
            tickets = [(bucket, bucket.reserve_ticket(n, now)) for bucket in self._buckets(key)]
        while True:
            with self._lock:
                now = self._clock()
                wait = max(bucket.delay_for(ticket, now) for bucket, ticket in tickets)
            if wait <= 0:
                return
            await self._sleep(wait)

    def pace(self, n: int, key: str | None, stop: threading.Event, poll_s: float) -> bool:
        """``consume`` for a worker thread: charge ``n`` bytes, then block until they are paid
        for, re-checking at once when a limit changes and at least every ``poll_s`` (``stop``
        ends the wait early: the caller looks at it). True when it had to wait. Unlimited, it
        returns at once (one lock, no sleep)."""
        with self._changed:
            now = self._clock()
            tickets = [(bucket, bucket.reserve_ticket(n, now)) for bucket in self._buckets(key)]
            waited = False
            while not stop.is_set():
                now = self._clock()
                wait = max(bucket.delay_for(ticket, now) for bucket, ticket in tickets)
                if wait <= 0:
                    break
                waited = True
                self._changed.wait(min(wait, poll_s))
            return waited

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

    def wake_paced(self) -> None:
        """Every thread waiting in :meth:`pace` re-checks now (a stop was set: it ends its wait
        at once instead of at its next poll)."""
        with self._changed:
            self._changed.notify_all()

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
        for fut in list(self._waiters):
            _release(fut)
