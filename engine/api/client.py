"""The light client of the engine daemon: what the launcher and ``launcher-engine`` import.

Importing it loads the standard library and ``engine.api.protocol`` only — no aiohttp, SQLite,
httpx, cryptography, zstandard or engine I/O (``python -X importtime -c "import
engine.api.client"``; bench/client.py measures it). Two clients speak the same protocol:

* ``DaemonClient`` (asyncio; ``websockets`` is imported when it connects): the launcher's,
  for long sessions with event streams on the Qt/asyncio loop;
* ``SyncDaemonClient`` (blocking; a minimal RFC 6455 client on a plain socket): the CLI's, so a
  one-shot command such as ``launcher-engine status`` starts fast without an event loop.

Events arrive typed (``engine.api.protocol`` dataclasses); errors arrive as ``EngineError``
with a typed code.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api.protocol import (
    PROTOCOL_VERSION,
    EngineError,
    ErrorCode,
    Event,
    event_from_wire,
)
from engine.core.locations import APP_NAME, ENV_PREFIX

if TYPE_CHECKING:  # only for types: importing them would load asyncio and websockets
    import asyncio

    from websockets.asyncio.client import ClientConnection

def default_data_dir() -> Path:
    """The engine's data folder when none is given: ``LAUNCHER_ENGINE_DATA_DIR`` or the
    platform's per-user data folder (the same rule as the engine's settings)."""
    env = os.environ.get(ENV_PREFIX + "DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


INFO_FILE = "daemon.json"
MAX_REPLY_BYTES = 256 * 1024 * 1024  # a status with a long queue is big, not this big
LOCK_FILE = "daemon.lock"


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    pid: int
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


def info_path(data_dir: Path) -> Path:
    return data_dir / INFO_FILE


def read_info(data_dir: Path) -> DaemonInfo | None:
    try:
        d = json.loads(info_path(data_dir).read_text())
        return DaemonInfo(int(d["pid"]), int(d["port"]), str(d["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def daemon_running(data_dir: Path) -> DaemonInfo | None:
    """The running daemon of this data dir, judged by its lock (not by a possibly stale file)."""
    lock = data_dir / LOCK_FILE
    if not lock.exists():
        return None
    with lock.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_info(data_dir)
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def _request(req_id: int | str | None, method: str, params: dict[str, Any] | None) -> str:
    return json.dumps({"id": req_id, "method": method,
                       "params": {k: v for k, v in (params or {}).items() if v is not None}})


def _result(msg: dict[str, Any]) -> Any:
    if "error" in msg:
        err = msg["error"] or {}
        raise EngineError(ErrorCode.from_wire(err.get("code"), ErrorCode.INTERNAL_ERROR),
                          str(err.get("message")), item=err.get("item"))
    return msg.get("result")


def _check_hello(hello: Any) -> None:
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        raise EngineError(ErrorCode.DAEMON_UNREACHABLE, f"unexpected greeting {hello!r:.200}")
    if hello.get("protocol") != PROTOCOL_VERSION:
        raise EngineError(ErrorCode.DAEMON_UNREACHABLE,
                          f"the daemon speaks protocol {hello.get('protocol')}, this client "
                          f"{PROTOCOL_VERSION}: restart the daemon from the same install")


def _unreachable(info: DaemonInfo, exc: BaseException) -> EngineError:
    return EngineError(ErrorCode.DAEMON_UNREACHABLE,
                       f"cannot reach the engine daemon at {info.url}: {exc}")


# -- blocking client ---------------------------------------------------------------------------

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _sha1(data: bytes) -> Any:
    """SHA-1 for the handshake: CPython's own (hashlib would start OpenSSL's, ~5 ms of every
    light client's start), hashlib's where a build lacks it."""
    try:
        from _sha1 import sha1
    except ImportError:
        from hashlib import sha1
    return sha1(data)


class _Closed(Exception):
    pass


class _WebSocket:
    """Just enough RFC 6455 for a local client: masked text frames out; text, continuation,
    ping and close frames in; no extensions."""

    def __init__(self, info: DaemonInfo, timeout: float | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", info.port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.rfile = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{info.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {info.token}\r\n\r\n").encode())
        status = self.rfile.readline(65536).decode("latin-1")
        headers: dict[str, str] = {}
        while (line := self.rfile.readline(65536).decode("latin-1")) not in ("\r\n", "\n", ""):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if " 101 " not in status:
            raise ConnectionError(f"handshake refused: {status.strip()}")
        want = base64.b64encode(_sha1(key.encode() + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != want:
            raise ConnectionError("handshake: bad Sec-WebSocket-Accept")

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise _Closed("connection closed")
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
                  ).to_bytes(n, "big") if n else b""
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            if n > MAX_REPLY_BYTES:
                raise _Closed(f"frame of {n} bytes")
            payload = self._read(n)
            if opcode == 0x8:
                with contextlib.suppress(OSError):
                    self._send_frame(0x8, payload[:2])
                raise _Closed(payload[2:].decode("utf-8", "replace") or "closed by the daemon")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send_frame(0x8, struct.pack("!H", 1000))
        self.rfile.close()
        self.sock.close()


class SyncDaemonClient:
    """Blocking requests; events that arrive meanwhile go to ``on_event`` (typed)."""

    def __init__(self, info: DaemonInfo, timeout: float | None = 30.0) -> None:
        self.info = info
        self.timeout = timeout
        self.on_event: Callable[[Event], None] | None = None
        self._ids = itertools.count(1)
        self._ws: _WebSocket | None = None

    def __enter__(self) -> SyncDaemonClient:
        try:
            self._ws = _WebSocket(self.info, self.timeout)
            _check_hello(json.loads(self._ws.recv()))
        except (OSError, ValueError, _Closed) as exc:
            raise _unreachable(self.info, exc) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()

    def _next(self, timeout: float | None) -> dict[str, Any]:
        assert self._ws is not None
        self._ws.sock.settimeout(timeout)
        try:
            msg = json.loads(self._ws.recv())
        except (OSError, _Closed) as exc:
            raise EngineError(ErrorCode.DAEMON_UNREACHABLE,
                              f"the daemon closed the connection: {exc}") from exc
        if not isinstance(msg, dict):
            raise EngineError(ErrorCode.DAEMON_UNREACHABLE, f"unexpected message {msg!r:.200}")
        return msg

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        assert self._ws is not None
        req_id = next(self._ids)
        self._ws.send(_request(req_id, method, params))
        long_call = method == "wait"  # answered when the task ends: no deadline
        while True:
            msg = self._next(None if long_call else self.timeout)
            if msg.get("type") == "event":
                if self.on_event is not None:
                    self.on_event(event_from_wire(msg.get("event") or {}))
                continue
            if msg.get("id") == req_id:
                return _result(msg)

    def subscribe(self, task_id: str | None = None) -> None:
        self.call("subscribe", {"taskId": task_id})

    def events(self) -> Iterator[Event]:
        """Events until the daemon closes the connection (after ``subscribe``)."""
        while True:
            msg = self._next(None)
            if msg.get("type") == "event":
                yield event_from_wire(msg.get("event") or {})


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
            self._ws = await connect(self.info.url, additional_headers={
                "Authorization": f"Bearer {self.info.token}"}, max_size=None, compression=None)
        except (OSError, InvalidStatus, WebSocketException) as exc:
            raise _unreachable(self.info, exc) from exc
        _check_hello(json.loads(await self._ws.recv()))
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
                    event = event_from_wire(msg.get("event") or {})
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
        await self._ws.send(_request(req_id, method, params))
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
