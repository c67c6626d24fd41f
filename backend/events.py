"""Per-user live events (seed 3.3) behind a small publish/subscribe interface.

Routes publish after their transaction committed (a client that reacts by reading the API must
see the change); the WebSocket route (``backend.ws``) subscribes one queue per connection. The
seed's message shape is ``{"event_type": ..., "payload": {...}}``.

``LocalEventBus`` fans out inside one process: enough for ``launcher-backend serve`` (one
worker). With several workers or hosts ``RedisEventBus`` publishes to a channel per user and
each process delivers to its own subscribers; nothing else changes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from backend.jsonapi import iso

QUEUE_LIMIT = 1000  # per connection; a consumer this far behind is dropped, not waited for

LIBRARY_ITEM_UPDATED = "library.item.updated"
ACHIEVEMENT_UNLOCKED = "achievement.unlocked"
SAVEGAME_SYNC_STATUS = "savegame.sync.status"
DOWNLOAD_TASK_CHANGED = "download.task.changed"  # remote downloads: created/paused/resumed/...
DOWNLOAD_QUEUE_REORDERED = "download.queue.reordered"


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


class RedisEventBus:
    """Fan-out across workers and hosts: ``publish`` sends the message to the user's Redis
    channel; one listener thread per process delivers every channel message to this process's
    own subscribers (a ``LocalEventBus``). A WebSocket client thus gets its events whichever
    worker handled the request that caused them. Delivery is at most once (Redis pub/sub): a
    client that reconnects re-reads the API, as it must after any drop."""

    CHANNEL = "launcher:events:"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.local = LocalEventBus()
        self._listener: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_listener(self) -> None:
        # started lazily, in the worker process (threads do not survive the pre-fork)
        with self._lock:
            if self._listener is not None and self._listener.is_alive():
                return
            self._listener = threading.Thread(target=self._listen, name="redis-events",
                                              daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        import time

        import redis

        while True:
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(self.CHANNEL + "*")
                for item in pubsub.listen():
                    if item.get("type") != "pmessage":
                        continue
                    channel = item["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    self.local.publish(channel[len(self.CHANNEL):], json.loads(item["data"]))
            except (redis.RedisError, OSError, ValueError):
                time.sleep(0.5)  # Redis away: retry; events published meanwhile are lost

    def subscribe(self, user_id: str) -> Subscription:
        self._ensure_listener()
        return self.local.subscribe(user_id)

    def subscriber_count(self, user_id: str) -> int:
        return self.local.subscriber_count(user_id)

    def publish(self, user_id: str, msg: dict[str, Any]) -> None:
        import redis

        try:
            self.client.publish(self.CHANNEL + user_id, json.dumps(msg))
        except redis.RedisError:
            # an event is a hint to re-read; the change itself is committed, so losing the hint
            # must not fail the request that made it
            self.local.publish(user_id, msg)
