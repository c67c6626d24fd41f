"""The sync agent's background work: send the journaled calls (playtime, achievements,
uninstalls) to the backend in order, close sessions a crash left open, relay the backend's
live library channel to the launcher, and keep games up to date when the player wants it.

The decisions are ``engine.core.playtime``'s; this module only sends and waits. Every loop is
bounded: a replay stops at the first call that must wait (offline, throttled, logged out) and
resumes on the next kick or tick; reconnects back off up to a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from engine.core.errors import EngineError, ErrorCode
from engine.core.messages import AchievementUnlocked, LibraryChanged, SaveSyncStatus
from engine.core.playtime import (
    CallKind,
    OutboxCall,
    Verdict,
    after_failure,
    close_orphans,
    compact,
)
from engine.io.bus import EventBus
from engine.io.library_client import LibraryApi
from engine.io.playstate import PlayState

log = logging.getLogger(__name__)
TICK_S = 30.0
RECONNECT_S = (1.0, 2.0, 5.0, 15.0, 60.0)


def _ts(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Outbox:
    def __init__(self, play: PlayState, bus: EventBus, library: Callable[[], LibraryApi],
                 heartbeat_s: Callable[[], float], running_sessions: Callable[[], set[str]]) -> None:
        self.play = play
        self.bus = bus
        self.library = library
        self.heartbeat_s = heartbeat_s
        self.running_sessions = running_sessions
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self.dropped = 0

    def kick(self) -> None:
        self._kick.set()

    def close_stale_sessions(self) -> int:
        """Sessions no engine has beaten for three heartbeat intervals end at their last beat."""
        now = time.time()
        closed = close_orphans(self.play.open_sessions(), self.running_sessions(), now,
                               3 * self.heartbeat_s() + 1)
        for s in closed:
            log.info("session %s of %s left open by a crash: ended at its last heartbeat",
                     s.id[:8], s.product_id)
            self.play.end_session(s.id, s.last_beat_at, None)
        return len(closed)

    async def replay(self) -> int:
        """Send what is pending, in order; the number of calls the backend took."""
        async with self._lock:
            calls, obsolete = compact(self.play.pending())
            self.play.forget(obsolete)
            sent = 0
            for call in calls:
                try:
                    await self._send(call)
                except EngineError as exc:
                    verdict = after_failure(exc.code, exc.http_status)
                    if verdict is Verdict.RETRY_LATER:
                        self.play.attempted(call.seq)
                        log.info("backend call %s waits: %s", call.kind.value, exc.message)
                        return sent
                    if verdict is Verdict.DROP:
                        self.dropped += 1
                        log.warning("backend refused %s %s for good: %s", call.kind.value,
                                    call.key, exc.message)
                self.play.forget([call.seq])
                sent += 1
            return sent

    async def _send(self, call: OutboxCall) -> None:
        api, p = self.library(), call.payload
        if call.kind is CallKind.SESSION_START:
            started = await api.start_session(call.key, str(p["productId"]), float(p["startedAt"]))
            self.play.set_server_id(call.key, started)
            return
        if call.kind in (CallKind.SESSION_HEARTBEAT, CallKind.SESSION_END):
            server_id = self.play.server_id(call.key)
            if server_id is None:
                raise EngineError(ErrorCode.VALIDATION_ERROR, f"session {call.key} never started "
                                  "on the backend", http_status=422)
            if call.kind is CallKind.SESSION_HEARTBEAT:
                await api.heartbeat(server_id, float(p["at"]))
            else:
                await api.end_session(server_id, float(p["endedAt"]))
            return
        if call.kind is CallKind.ACHIEVEMENT_UNLOCK:
            await api.unlock(str(p["productId"]), str(p["achievementId"]),
                             str(p["clientUnlockId"]), float(p["at"]))
            return
        if call.kind is CallKind.ACHIEVEMENT_PROGRESS:
            state = await api.progress(str(p["productId"]), str(p["achievementId"]),
                                       int(p["current"]), float(p["at"]))
            if state.get("newly_unlocked"):
                self.bus.publish(AchievementUnlocked(str(p["productId"]), str(p["achievementId"]),
                                                     state.get("name"), time.time()))
            return
        if call.kind is CallKind.UNINSTALLED:
            version = p.get("versionId")
            await api.installation_event(str(p["productId"]), "uninstalled",
                                         None if version is None else str(version), float(p["at"]))

    async def run(self) -> None:
        """Forever: close stale sessions, replay; again on a kick or every ``TICK_S``."""
        while True:
            self._kick.clear()
            try:
                self.close_stale_sessions()
                await self.replay()
            except EngineError as exc:
                log.warning("outbox: %s", exc.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._kick.wait()


class LibraryRelay:
    """The backend's ``/api/v1/ws/library-updates`` to the launcher: changes made on another
    device (a category, an unlock, a save) show here without a reload."""

    def __init__(self, bus: EventBus, library: Callable[[], LibraryApi],
                 ready: Callable[[], bool]) -> None:
        self.bus = bus
        self.library = library
        self.ready = ready
        self.connected = False

    def relay(self, doc: dict[str, Any]) -> None:
        kind, payload = doc.get("event_type"), doc.get("payload") or {}
        if not isinstance(payload, dict):
            return
        pid = str(payload.get("product_id") or "")
        if kind == "library.item.updated":
            self.bus.publish(LibraryChanged(pid, dict(payload.get("changes") or {})))
        elif kind == "achievement.unlocked":
            self.bus.publish(AchievementUnlocked(pid, str(payload.get("achievement_id") or ""),
                                                 payload.get("achievement_name"),
                                                 _ts(payload.get("unlocked_at"))))
        elif kind == "savegame.sync.status":
            self.bus.publish(SaveSyncStatus(pid, f"cloud_{payload.get('status') or 'changed'}",
                                            last_synced_at=_ts(payload.get("last_synced_at")),
                                            error_message=payload.get("error_message")))

    async def run(self) -> None:
        attempt = 0
        while True:
            if self.ready():
                try:
                    async for doc in self.library().updates():
                        self.connected, attempt = True, 0
                        self.relay(doc)
                except EngineError as exc:
                    log.info("library channel: %s", exc.message)
                finally:
                    self.connected = False
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1
