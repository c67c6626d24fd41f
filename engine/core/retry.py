"""Retry timing and stall detection for fetchers, kept pure so they test without sleeping.

The caller owns randomness and time: :meth:`RetryPolicy.delay` takes the random draw, and
:class:`StallDetector` takes ``now``. That keeps backoff reproducible in tests and lets one
policy object be shared by every connection.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["RetryPolicy", "StallDetector"]

_MAX_EXPONENT = 1000  # 2.0**1000 is still finite; beyond that the cap decides anyway


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    ``attempt`` counts tries already made (1 = the first try just failed). ``jitter`` is the share
    of each delay that is randomised: 0 gives fixed delays, 1 gives AWS-style "full jitter", the
    default 0.5 keeps at least half the backoff so a stampede of retries still spreads out.
    """

    max_attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not (math.isfinite(self.base_delay) and self.base_delay >= 0):
            raise ValueError(f"base_delay must be a finite number >= 0, got {self.base_delay}")
        if not (math.isfinite(self.max_delay) and self.max_delay >= self.base_delay):
            raise ValueError(
                f"max_delay must be finite and >= base_delay ({self.base_delay}), got {self.max_delay}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered backoff after ``attempt`` tries: base * 2**(attempt-1), capped."""
        if attempt < 1:
            raise ValueError(f"attempt counts tries made and starts at 1, got {attempt}")
        exponent = min(attempt - 1, _MAX_EXPONENT)
        return min(self.max_delay, self.base_delay * 2.0**exponent)

    def delay(self, attempt: int, rnd: float) -> float:
        """Seconds to wait after ``attempt`` failed tries; ``rnd`` is a uniform draw in [0, 1)."""
        if not 0.0 <= rnd < 1.0:
            raise ValueError(f"rnd must be in [0, 1), got {rnd}")
        return self.ceiling(attempt) * (1.0 - self.jitter * rnd)

    def should_retry(self, attempt: int) -> bool:
        """True while fewer than ``max_attempts`` tries have been made."""
        return attempt < self.max_attempts


class _Group:
    """Observations merged because they arrived within one resolution step."""

    __slots__ = ("first", "last", "nbytes")

    def __init__(self, now: float, nbytes: int) -> None:
        self.first = now
        self.last = now
        self.nbytes = nbytes


class StallDetector:
    """Flags a transfer that delivered fewer than ``min_bytes`` in the last ``window_s`` seconds.

    A read timeout alone misses a server that trickles a byte every few seconds; this catches it.
    The window only counts from the start (construction with ``now``, :meth:`reset`, or the first
    call), so a fresh request is never stalled before it had a full window. Observations are
    merged into at most ~64 groups per window so memory stays bounded at any throughput; a group
    counts until its newest byte leaves the window, which errs towards "not stalled".
    """

    _GROUPS_PER_WINDOW = 64

    def __init__(self, window_s: float = 10.0, min_bytes: int = 1, now: float | None = None) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a positive finite number, got {window_s}")
        if min_bytes < 1:
            raise ValueError(f"min_bytes must be >= 1, got {min_bytes}")
        self.window_s = float(window_s)
        self.min_bytes = min_bytes
        self._resolution = self.window_s / self._GROUPS_PER_WINDOW
        self._start: float | None = None if now is None else float(now)
        self._groups: deque[_Group] = deque()  # oldest first
        self._in_window = 0

    def reset(self, now: float) -> None:
        """Start a fresh window (e.g. a new request on the same connection)."""
        self._start = float(now)
        self._groups.clear()
        self._in_window = 0

    def observe(self, nbytes: int, now: float) -> None:
        """Record ``nbytes`` arriving at ``now``."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if self._start is None:
            self._start = float(now)
        self._prune(now)
        if nbytes == 0:
            return
        last = self._groups[-1] if self._groups else None
        if last is not None and now - last.first < self._resolution:
            last.last = max(last.last, now)
            last.nbytes += nbytes
        else:
            self._groups.append(_Group(now, nbytes))
        self._in_window += nbytes

    def bytes_in_window(self, now: float) -> int:
        """Bytes seen within the trailing window (group-granular, see class docstring)."""
        self._prune(now)
        return self._in_window

    def stalled(self, now: float) -> bool:
        """True once a full window has passed since start with fewer than ``min_bytes``."""
        if self._start is None:
            self._start = float(now)
        if now - self._start < self.window_s:
            return False
        return self.bytes_in_window(now) < self.min_bytes

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._groups and self._groups[0].last <= horizon:
            self._in_window -= self._groups.popleft().nbytes
