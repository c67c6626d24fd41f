"""Per-user live events (seed 3.3) behind a small publish/subscribe interface.

Routes publish after their transaction committed (a client that reacts by reading the API must
see the change); the WebSocket route (``backend.ws``) subscribes one queue per connection. The
seed's message shape is ``{"event_type": ..., "payload": {...}}``.

``LocalEventBus`` fans out inside one process: enough for ``launcher-backend serve`` (one
worker). With several workers or hosts a Redis (or Kafka) implementation of ``EventBus`` would
publish to a channel per user and let each process deliver to its own subscribers; nothing else
changes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from backend.jsonapi import iso

QUEUE_LIMIT = 1000  # per connection; a consumer this far behind is dropped, not waited for

LIBRARY_ITEM_UPDATED = "library.item.updated"
ACHIEVEMENT_UNLOCKED = "achievement.unlocked"
SAVEGAME_SYNC_STATUS = "savegame.sync.status"


def message(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The seed's envelope; datetimes as ISO 8601 UTC strings (the message goes out as JSON)."""
    return {"event_type": event_type, "payload": {
        k: iso(v) if isinstance(v, datetime) else v for k, v in payload.items()}}


class Subscription:
    """One connection's queue, fed from any thread through its event loop."""

    def __init__(self, user_id: str, loop: asyncio.AbstractEventLoop,
                 on_close: Callable[[Subscription], None]) -> None:
        self.user_id = user_id
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = asyncio.Event()
        self._on_close = on_close

    def deliver(self, msg: dict[str, Any]) -> None:
        """Runs on ``loop``."""
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.overflowed.set()

    def close(self) -> None:
        self._on_close(self)


class EventBus(Protocol):
    def publish(self, user_id: str, msg: dict[str, Any]) -> None: ...
    def subscribe(self, user_id: str) -> Subscription: ...
    def subscriber_count(self, user_id: str) -> int: ...


class LocalEventBus:
    """In-process fan-out; ``publish`` may be called from worker threads (sync routes)."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()

    def subscribe(self, user_id: str) -> Subscription:
        sub = Subscription(user_id, asyncio.get_running_loop(), self._remove)
        with self._lock:
            self._subs.setdefault(user_id, set()).add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.user_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.user_id]

    def subscriber_count(self, user_id: str) -> int:
        with self._lock:
            return len(self._subs.get(user_id, ()))

    def publish(self, user_id: str, msg: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs.get(user_id, ()))
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub.deliver, msg)
            except RuntimeError:  # its loop is closed: the connection is gone
                self._remove(sub)
