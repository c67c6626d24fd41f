"""The in-process event bus: slow subscribers never slow the engine. Progress events coalesce
(latest state wins, keeping its place in line); state changes are never dropped."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from engine.core.messages import Event


def _task_of(event: Event) -> str | None:
    return getattr(event, "task_id", None)


class Subscription:
    """A bounded per-subscriber buffer; ``task_id`` filters to one task when set."""

    def __init__(self, bus: EventBus, task_id: str | None, max_events: int) -> None:
        self._bus = bus
        self.task_id = task_id
        self.max_events = max_events
        self._progress: OrderedDict[tuple[str, ...], Event] = OrderedDict()
        self._order: list[tuple[str, ...] | Event] = []
        self._wake = asyncio.Event()
        self.dropped_progress = 0

    def _offer(self, event: Event) -> None:
        if self.task_id is not None and _task_of(event) not in (self.task_id, None):
            return
        key = event.coalesce_key
        if key is None:
            self._order.append(event)
        elif key in self._progress:
            self._progress[key] = event  # latest state wins, keeps its place in line
            self.dropped_progress += 1
        else:
            if len(self._progress) >= self.max_events:
                oldest = next(iter(self._progress))
                del self._progress[oldest]
                self._order.remove(oldest)
                self.dropped_progress += 1
            self._progress[key] = event
            self._order.append(key)
        self._wake.set()

    def pending(self) -> int:
        return len(self._order)

    def pop_nowait(self) -> Event | None:
        if not self._order:
            return None
        head = self._order.pop(0)
        if isinstance(head, tuple):
            return self._progress.pop(head)
        return head

    async def get(self) -> Event:
        while True:
            event = self.pop_nowait()
            if event is not None:
                return event
            self._wake.clear()
            await self._wake.wait()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._callbacks: list[Callable[[Event], None]] = []

    def subscribe(self, task_id: str | None = None, max_events: int = 1000) -> Subscription:
        sub = Subscription(self, task_id, max_events)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def on_event(self, callback: Callable[[Event], None]) -> None:
        """Synchronous listeners (CLI progress bar); they must be quick."""
        self._callbacks.append(callback)

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            sub._offer(event)
        for cb in list(self._callbacks):
            cb(event)
