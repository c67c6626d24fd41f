"""The light client of the engine daemon: what the launcher and ``launcher-engine`` import.

Importing it loads the standard library and ``engine.core.errors`` only — no aiohttp, SQLite,
httpx, cryptography, zstandard, engine I/O, nor even the protocol's command table and event
classes, which come when first needed (``python -X importtime -c "import engine.api.client"``;
bench/client.py measures it). Two clients speak the same protocol:

* ``DaemonClient`` (asyncio; ``websockets`` is imported when it connects): the launcher's,
  for long sessions with event streams on the Qt/asyncio loop;
* ``SyncDaemonClient`` (blocking; a minimal RFC 6455 client on a plain socket): the CLI's, so a
  one-shot command such as ``launcher-engine status`` starts fast without an event loop. Its
  handshake can be sent early (``open``) and read later, so a caller's own start-up work runs
  while the daemon answers.

Events arrive typed (``engine.api.protocol`` dataclasses); errors arrive as ``EngineError``
with a typed code.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api import wire
from engine.core.errors import EngineError, ErrorCode

if TYPE_CHECKING:  # only for types: importing them would load asyncio and websockets
    import asyncio

    from websockets.asyncio.client import ClientConnection

    from engine.api.protocol import Event


def default_data_dir() -> Path:
    """The engine's data folder when none is given (``engine.api.wire.default_data_dir``)."""
    return Path(wire.default_data_dir())


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """What ``daemon.json`` says: the daemon's process, port and token."""

    pid: int
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


def info_path(data_dir: Path) -> Path:
    return data_dir / wire.INFO_FILE


def read_info(data_dir: Path) -> DaemonInfo | None:
    fields = wire.read_info(os.fspath(data_dir))
    return None if fields is None else DaemonInfo(*fields)


def daemon_running(data_dir: Path) -> DaemonInfo | None:
    """The running daemon of this data dir, judged by its lock (not by a possibly stale file)."""
    fields = wire.running_daemon(os.fspath(data_dir))
    return None if fields is None else DaemonInfo(*fields)


def _result(msg: dict[str, Any]) -> Any:
    if "error" in msg:
        err = msg["error"] or {}
        raise EngineError(ErrorCode.from_wire(err.get("code"), ErrorCode.INTERNAL_ERROR),
                          str(err.get("message")), item=err.get("item"))
    return msg.get("result")


def _event(data: Any) -> Event:
    from engine.api.protocol import event_from_wire  # the event classes: with the first event

    return event_from_wire(data or {})


def _check_hello(hello: Any) -> None:
    problem = wire.hello_problem(hello)
    if problem is not None:
        raise EngineError(ErrorCode.DAEMON_UNREACHABLE, problem)


def _handshake_timeout(timeout: float | None) -> float:
    return wire.HANDSHAKE_TIMEOUT_S if timeout is None else min(timeout, wire.HANDSHAKE_TIMEOUT_S)


def _not_answering(info: DaemonInfo) -> EngineError:
    return EngineError(ErrorCode.DAEMON_UNREACHABLE, wire.not_answering(info.pid))


def _unreachable(info: DaemonInfo, exc: BaseException) -> EngineError:
    return EngineError(ErrorCode.DAEMON_UNREACHABLE,
                       f"cannot reach the engine daemon at {info.url}: {exc}")


# -- blocking client ---------------------------------------------------------------------------

class SyncDaemonClient:
    """Blocking requests; events that arrive meanwhile go to ``on_event`` (typed).

    ``open`` connects and sends the handshake without waiting for the answer (a failure is
    kept and reported by ``__enter__``, as if it had happened there); ``__enter__`` opens if
    that was not done, reads the answer and the daemon's greeting."""

    def __init__(self, info: DaemonInfo, timeout: float | None = 30.0) -> None:
        self.info = info
        self.timeout = timeout
        self.on_event: Callable[[Event], None] | None = None
        self._ids = itertools.count(1)
        self._ws: wire.WebSocket | None = None
        self._failed: BaseException | None = None
        self._unanswered: set[int] = set()  # requests sent with ``reply=False``

    def open(self) -> SyncDaemonClient:
        if self._ws is None and self._failed is None:
            try:
                self._ws = wire.WebSocket(self.info.port, self.info.token, self.timeout)
            except (OSError, ValueError) as exc:
                self._failed = exc
        return self

    def __enter__(self) -> SyncDaemonClient:
        self.open()
        try:
            if self._failed is not None:
                raise self._failed
            assert self._ws is not None
            self._ws.sock.settimeout(_handshake_timeout(self.timeout))
            self._ws.accept()
            _check_hello(json.loads(self._ws.recv()))
            self._ws.sock.settimeout(self.timeout)
        except TimeoutError as exc:
            self.close()
            raise _not_answering(self.info) from exc
        except (OSError, ValueError, wire.Closed) as exc:
            self.close()
            raise _unreachable(self.info, exc) from exc
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def _next(self, timeout: float | None) -> dict[str, Any]:
        assert self._ws is not None
        self._ws.sock.settimeout(timeout)
        try:
            msg = json.loads(self._ws.recv())
        except (OSError, wire.Closed) as exc:
            raise EngineError(ErrorCode.DAEMON_UNREACHABLE,
                              f"the daemon closed the connection: {exc}") from exc
        if not isinstance(msg, dict):
            raise EngineError(ErrorCode.DAEMON_UNREACHABLE, f"unexpected message {msg!r:.200}")
        answered = msg.get("id")
        if isinstance(answered, int) and answered in self._unanswered:
            self._unanswered.discard(answered)  # an earlier request's reply: only an error counts
            _result(msg)
        return msg

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a request without waiting for its reply (an error in the reply is raised by
        whichever later call reads it); the daemon answers a connection's requests in order."""
        assert self._ws is not None
        req_id = next(self._ids)
        self._ws.send(wire.request(req_id, method, params))
        return req_id

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        req_id = self.send(method, params)
        long_call = method == "wait"  # answered when the task ends: no deadline
        while True:
            msg = self._next(None if long_call else self.timeout)
            if msg.get("type") == "event":
                if self.on_event is not None:
                    self.on_event(_event(msg.get("event")))
                continue
            if msg.get("id") == req_id:
                return _result(msg)

    def subscribe(self, task_id: str | None = None, *, reply: bool = True) -> None:
        """Events from now on; with ``reply=False`` the next request follows at once (its
        events flow all the same: the daemon subscribes before it reads that request)."""
        if reply:
            self.call("subscribe", {"taskId": task_id})
        else:
            self._unanswered.add(self.send("subscribe", {"taskId": task_id}))

    def events(self) -> Iterator[Event]:
        """Events until the daemon closes the connection (after ``subscribe``)."""
        while True:
            msg = self._next(None)
            if msg.get("type") == "event":
                yield _event(msg.get("event"))


# -- asyncio client ------------------------------------------------------------------------------

class DaemonClient:
    """Requests with ids, answers matched by id, events to ``on_event`` or the ``events``
    queue (typed). ``asyncio`` and ``websockets`` load when it connects."""

    def __init__(self, info: DaemonInfo) -> None:
        self.info = info
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int | None, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.events: asyncio.Queue[Event] | None = None
        self.on_event: Callable[[Event], None] | None = None

    async def __aenter__(self) -> DaemonClient:
        import asyncio

        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        self.events = asyncio.Queue(maxsize=10_000)
        try:
            async with asyncio.timeout(wire.HANDSHAKE_TIMEOUT_S):
                self._ws = await connect(self.info.url, additional_headers={
                    "Authorization": f"Bearer {self.info.token}"}, max_size=None,
                    compression=None, open_timeout=None)
                hello = await self._ws.recv()
        except TimeoutError as exc:
            if self._ws is not None:  # no closing handshake with a daemon that does not answer
                self._ws.transport.abort()
                self._ws = None
            raise _not_answering(self.info) from exc
        except (OSError, InvalidStatus, WebSocketException) as exc:
            raise _unreachable(self.info, exc) from exc
        _check_hello(json.loads(hello))
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        assert self._ws is not None and self.events is not None
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                if msg.get("type") == "event":
                    event = _event(msg.get("event"))
                    if self.on_event is not None:
                        self.on_event(event)
                    elif not self.events.full():
                        self.events.put_nowait(event)
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
        import asyncio

        assert self._ws is not None
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await self._ws.send(wire.request(req_id, method, params))
        return _result(await fut)

    async def send_raw(self, text: str | bytes) -> dict[str, Any]:
        """For tests of bad input: send anything, return the next reply without an id."""
        import asyncio

        assert self._ws is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[None] = fut
        await self._ws.send(text)
        result: dict[str, Any] = await fut
        return result

    async def subscribe(self, task_id: str | None = None) -> None:
        await self.call("subscribe", {"taskId": task_id})

    async def wait_closed(self) -> None:
        """Returns when the connection ends (the daemon stopped or died)."""
        if self._reader is not None:
            await self._reader
