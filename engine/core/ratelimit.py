"""Download speed limits: a pure token bucket (the asyncio shell is engine/io/limiter.py).

The bucket is debt-based: a reservation always succeeds and returns how long the caller must wait
before using the bytes. A read larger than the burst therefore never deadlocks; it just pushes the
bucket into debt that later readers queue behind. The bucket never reads a clock itself; callers
pass ``now`` (seconds on any monotonic scale), so tests drive it with a fake clock.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_MIN_BURST", "TokenBucket", "default_burst"]

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
