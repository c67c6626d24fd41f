"""A client of the daemon's control API (used by ``launcher-engine`` and the launcher)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from engine.api.daemon import DaemonInfo
from engine.core.errors import EngineError, ErrorCode
from engine.core.events import Event


class DaemonClient:
    """Requests with ids, answers matched by id, events delivered to a callback or a queue."""

    def __init__(self, info: DaemonInfo) -> None:
        self.info = info
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        self.on_event: Callable[[Event], None] | None = None

    async def __aenter__(self) -> DaemonClient:
        try:
            self._ws = await connect(self.info.url, additional_headers={
                "Authorization": f"Bearer {self.info.token}"}, max_size=None, compression=None)
        except (OSError, InvalidStatus, WebSocketException) as exc:
            raise EngineError(ErrorCode.DAEMON_UNREACHABLE, f"cannot reach the engine daemon at "
                              f"{self.info.url}: {exc}") from exc
        hello = json.loads(await self._ws.recv())
        if hello.get("type") != "hello":
            raise EngineError(ErrorCode.DAEMON_UNREACHABLE, f"unexpected greeting {hello!r}")
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                if msg.get("type") == "event":
                    if self.on_event is not None:
                        self.on_event(msg["event"])
                    elif not self.events.full():
                        self.events.put_nowait(msg["event"])
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(EngineError(ErrorCode.DAEMON_UNREACHABLE,
                                                  "the daemon closed the connection"))

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        assert self._ws is not None
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await self._ws.send(json.dumps({"id": req_id, "method": method,
                                        "params": {k: v for k, v in (params or {}).items()
                                                   if v is not None}}))
        msg = await fut
        if "error" in msg:
            err = msg["error"]
            raise EngineError(ErrorCode.from_wire(err.get("code"), ErrorCode.INTERNAL_ERROR),
                              str(err.get("message")), item=err.get("item"))
        return msg.get("result")

    async def send_raw(self, text: str | bytes) -> dict[str, Any]:
        """For tests of bad input: send anything, return the next non-event reply."""
        assert self._ws is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[None] = fut  # type: ignore[index]
        await self._ws.send(text)
        result: dict[str, Any] = await fut
        return result

    async def subscribe(self, task_id: str | None = None) -> None:
        await self.call("subscribe", {"taskId": task_id} if task_id else {})
