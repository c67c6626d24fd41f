"""Download schedule: the time windows in which downloads may run (Steam's "only auto-update
between"). Pure functions of wall-clock datetimes; the caller supplies ``at``.

Times are wall-clock (``datetime.time`` without tzinfo) and days are ``date.weekday()`` numbers
(0 = Monday). A window whose end is not after its start crosses midnight and belongs to the day it
starts on: "fri 22:00-06:00" runs from Friday 22:00 to Saturday 06:00. A window with equal start
and end lasts a full 24 hours. Ends are exclusive.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["ALL_DAYS", "DAY_NAMES", "DownloadSchedule", "Window", "parse_window"]

ALL_DAYS: frozenset[int] = frozenset(range(7))
DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_BY_NAME = {name: i for i, name in enumerate(DAY_NAMES)} | {
    name: i for i, name in enumerate(_FULL_DAY_NAMES)
}
_ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Window:
    """One recurring allowed period, starting at ``start`` on each of ``days``."""

    start: dt.time
    end: dt.time
    days: frozenset[int] = field(default=ALL_DAYS)

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is not None:
                raise ValueError(f"window {name} must be a wall-clock time without tzinfo")
            if value.microsecond:
                raise ValueError(f"window {name} must be whole seconds, got {value.isoformat()}")
        if not self.days:
            raise ValueError("window needs at least one day")
        bad = sorted(d for d in self.days if not (isinstance(d, int) and 0 <= d <= 6))
        if bad:
            raise ValueError(f"window days must be 0..6 (0 = Monday), got {bad}")

    @property
    def crosses_midnight(self) -> bool:
        """True when the window ends on the day after it starts."""
        return self.end <= self.start

    def span_on(self, day: dt.date, tz: dt.tzinfo | None = None) -> tuple[dt.datetime, dt.datetime]:
        """The ``[start, end)`` interval if the window starts on ``day`` (ignores ``days``)."""
        begin = dt.datetime.combine(day, self.start, tzinfo=tz)
        finish = dt.datetime.combine(day + _ONE_DAY if self.crosses_midnight else day, self.end)
        return begin, finish.replace(tzinfo=tz)

    def to_text(self) -> str:
        """Canonical text that :func:`parse_window` reads back to an equal window."""
        times = f"{_fmt_time(self.start)}-{_fmt_time(self.end)}"
        if self.days == ALL_DAYS:
            return times
        return ",".join(DAY_NAMES[d] for d in sorted(self.days)) + " " + times


def _fmt_time(value: dt.time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


@dataclass(frozen=True)
class DownloadSchedule:
    """A set of windows; no windows means downloads are always allowed."""

    windows: tuple[Window, ...] = ()

    def _spans(self, at: dt.datetime, first: int, last: int) -> Iterator[tuple[dt.datetime, ...]]:
        """Spans of windows starting on days ``at.date()+first`` .. ``at.date()+last``."""
        for offset in range(first, last + 1):
            day = at.date() + dt.timedelta(days=offset)
            for window in self.windows:
                if day.weekday() in window.days:
                    yield window.span_on(day, at.tzinfo)

    def allowed(self, at: dt.datetime) -> bool:
        """May a download run at ``at``?"""
        if not self.windows:
            return True
        return any(begin <= at < end for begin, end in self._spans(at, -1, 0))

    def next_allowed(self, at: dt.datetime) -> dt.datetime | None:
        """``at`` itself if allowed, else the next window start (None only if there is none)."""
        if self.allowed(at):
            return at
        starts = [begin for begin, _ in self._spans(at, 0, 7) if begin > at]
        return min(starts, default=None)

    def allowed_until(self, at: dt.datetime) -> dt.datetime | None:
        """When the allowed stretch containing ``at`` ends, so running downloads can be paused.

        Overlapping and back-to-back windows are merged. None when ``at`` is not allowed or the
        stretch never ends (no windows, or windows covering every hour of the week).
        """
        if not self.windows or not self.allowed(at):
            return None
        limit = at + dt.timedelta(days=8)
        current = at
        while current < limit:
            ends = [end for begin, end in self._spans(current, -1, 0) if begin <= current < end]
            if not ends:
                return current
            current = max(ends)
        return None


def parse_window(text: str) -> Window:
    """Parse "22:00-06:00", "mon,tue 01:00-05:00" or "mon-fri 01:00-05:00".

    Day names are the English three-letter or full names, case-insensitive; ranges may wrap
    ("fri-mon"). Times are HH:MM or HH:MM:SS; "24:00" is accepted as an end.
    """
    stripped = text.strip()
    first_digit = next((i for i, ch in enumerate(stripped) if ch.isdigit()), None)
    if first_digit is None:
        raise ValueError(f"missing time range like '01:00-05:00' in window {text!r}")
    days_text, times_text = stripped[:first_digit].strip(), stripped[first_digit:]
    days = _parse_days(days_text, text) if days_text else ALL_DAYS
    pieces = times_text.split("-")
    if len(pieces) != 2:
        raise ValueError(f"time range {times_text.strip()!r} in window {text!r} must be 'HH:MM-HH:MM'")
    start = _parse_time(pieces[0].strip(), text, allow_24=False)
    end = _parse_time(pieces[1].strip(), text, allow_24=True)
    return Window(start, end, days)


def _parse_days(days_text: str, text: str) -> frozenset[int]:
    days: set[int] = set()
    for token in days_text.split(","):
        token = token.strip().lower()
        if not token:
            raise ValueError(f"empty day name in {days_text!r} of window {text!r}")
        if "-" in token:
            first_name, _, last_name = (part.strip() for part in token.partition("-"))
            first, last = _day(first_name, text), _day(last_name, text)
            span = (last - first) % 7
            days.update((first + i) % 7 for i in range(span + 1))
        else:
            days.add(_day(token, text))
    return frozenset(days)


def _day(name: str, text: str) -> int:
    try:
        return _DAY_BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown day {name!r} in window {text!r}; use mon, tue, wed, thu, fri, sat, sun"
        ) from None


def _parse_time(value: str, text: str, *, allow_24: bool) -> dt.time:
    fields = value.split(":")
    if not value or len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
        raise ValueError(f"bad time {value!r} in window {text!r}; expected HH:MM")
    if any(len(f) > 2 for f in fields) or any(len(f) != 2 for f in fields[1:]):
        raise ValueError(f"bad time {value!r} in window {text!r}; expected HH:MM")
    numbers = [int(f) for f in fields]
    if allow_24 and numbers[0] == 24 and not any(numbers[1:]):
        return dt.time(0, 0)
    hour, minute, second = (*numbers, 0)[:3]
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time {value!r} out of range in window {text!r}")
    return dt.time(hour, minute, second)
