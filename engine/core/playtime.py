"""Playtime and the outbox, the decisions: session lengths and totals, sessions a crash left
open, and what to do with a journaled backend call that failed. Plain functions over data.

Every call the sync agent owes the backend (session start, heartbeat, end, achievement unlock
and progress, uninstall) is journaled first and sent in order by one replayer; each carries an
idempotency key, so a call repeated after a lost answer changes nothing on the backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from engine.core.errors import ErrorCode


class CallKind(StrEnum):
    SESSION_START = "session_start"
    SESSION_HEARTBEAT = "session_heartbeat"
    SESSION_END = "session_end"
    ACHIEVEMENT_UNLOCK = "achievement_unlock"
    ACHIEVEMENT_PROGRESS = "achievement_progress"
    UNINSTALLED = "uninstalled"


@dataclass(frozen=True, slots=True)
class LocalSession:
    id: str  # also the backend's idempotency key for this session
    product_id: str
    started_at: float
    last_beat_at: float
    ended_at: float | None = None
    exit_code: int | None = None

    def seconds(self, now: float) -> float:
        """How long it ran: to its end, else (running) to now."""
        end = self.ended_at if self.ended_at is not None else max(now, self.last_beat_at)
        return max(0.0, end - self.started_at)

    def to_dict(self, now: float) -> dict[str, object]:
        return {"sessionId": self.id, "productId": self.product_id, "startedAt": self.started_at,
                "endedAt": self.ended_at, "exitCode": self.exit_code,
                "seconds": round(self.seconds(now), 3)}


def local_totals(sessions: Iterable[LocalSession], now: float) -> dict[str, float]:
    totals: dict[str, float] = {}
    for s in sessions:
        totals[s.product_id] = totals.get(s.product_id, 0.0) + s.seconds(now)
    return totals


def close_orphans(sessions: Iterable[LocalSession], running: set[str], now: float,
                  stale_after: float) -> list[LocalSession]:
    """Sessions left open by a crash of the engine or the machine: not tracked here and without
    a heartbeat for ``stale_after`` seconds (another engine process may still be beating one).
    Each ends at its last heartbeat, the last moment it was known to run."""
    return [LocalSession(s.id, s.product_id, s.started_at, s.last_beat_at, s.last_beat_at, None)
            for s in sessions if s.ended_at is None and s.id not in running
            and now - s.last_beat_at >= stale_after]


@dataclass(frozen=True, slots=True)
class OutboxCall:
    seq: int
    kind: CallKind
    key: str  # what the call is about: a session id, "product/achievement", a product
    payload: dict[str, Any]


def compact(calls: Sequence[OutboxCall]) -> tuple[list[OutboxCall], list[int]]:
    """The calls worth sending and the seqs to forget: a heartbeat is pointless once a later
    heartbeat or the end of the same session is queued (the end carries its own time), and a
    progress report once a later one of the same achievement is (progress only grows)."""
    later: set[tuple[str, str]] = set()
    keep: list[OutboxCall] = []
    drop: list[int] = []
    for call in reversed(calls):
        if call.kind in (CallKind.SESSION_HEARTBEAT, CallKind.SESSION_END):
            if call.kind is CallKind.SESSION_HEARTBEAT and ("session", call.key) in later:
                drop.append(call.seq)
                continue
            later.add(("session", call.key))
        elif call.kind is CallKind.ACHIEVEMENT_PROGRESS:
            if ("progress", call.key) in later:
                drop.append(call.seq)
                continue
            later.add(("progress", call.key))
        keep.append(call)
    keep.reverse()
    return keep, sorted(drop)


class Verdict(Enum):
    DONE = "done"  # the backend has it (or already had it)
    RETRY_LATER = "retry_later"  # stop replaying; the order is kept
    DROP = "drop"  # refused for good (logged); replaying it would never succeed


_LATER = {ErrorCode.BACKEND_UNREACHABLE, ErrorCode.RATE_LIMITED, ErrorCode.SERVICE_UNAVAILABLE,
          ErrorCode.AUTH_REQUIRED, ErrorCode.UNAUTHENTICATED}


def after_failure(code: ErrorCode, http_status: int | None) -> Verdict:
    """A failed call: no answer, a server error, throttling or a login needed → later, in
    order; any other refusal (4xx) would be refused again → dropped (and logged)."""
    if code is ErrorCode.ACHIEVEMENT_ALREADY_UNLOCKED:
        return Verdict.DONE  # unlocked already (a retry, or another device): once on the backend
    if http_status is None or http_status >= 500 or http_status in (401, 408, 429):
        return Verdict.RETRY_LATER
    return Verdict.RETRY_LATER if code in _LATER else Verdict.DROP


class GameplayDownloads(StrEnum):
    """Settings → downloads while a game runs (Steam's "allow downloads during gameplay")."""

    PAUSE = "pause"
    THROTTLE = "throttle"
    CONTINUE = "continue"


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    hold: bool  # no download runs (running ones stop, resumable)
    limit_bps: int | None  # the global limit in force


def downloads_policy(mode: str, gameplay_limit: int, games_running: int,
                     user_limit: int | None) -> DownloadPolicy:
    """What downloads may do now: the player's own limit, tightened while games run."""
    if games_running == 0 or mode == GameplayDownloads.CONTINUE:
        return DownloadPolicy(False, user_limit)
    if mode == GameplayDownloads.PAUSE:
        return DownloadPolicy(True, user_limit)
    return DownloadPolicy(False, gameplay_limit if user_limit is None
                          else min(user_limit, gameplay_limit))


def updates_to_queue(answers: Iterable[dict[str, object]], busy: set[str],
                     running: set[str]) -> list[str]:
    """Automatic updates: games the backend has an update for, not already worked on, not
    running (an update never replaces files under a running game)."""
    out = []
    for a in answers:
        pid = str(a.get("productId"))
        if a.get("isUpdateAvailable") and pid not in busy and pid not in running:
            out.append(pid)
    return out
