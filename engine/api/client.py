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

import _socket  # the socket module's base: see _WebSocket
import binascii
import contextlib
import fcntl
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import EngineError, ErrorCode
from engine.core.locations import APP_NAME, ENV_PREFIX

if TYPE_CHECKING:  # only for types: importing them would load asyncio and websockets
    import asyncio

    from websockets.asyncio.client import ClientConnection

    from engine.api.protocol import Event


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
    """What ``daemon.json`` says: the daemon's process, port and token."""

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


def _event(data: Any) -> Event:
    from engine.api.protocol import event_from_wire  # the event classes: with the first event

    return event_from_wire(data or {})


def _check_hello(hello: Any) -> None:
    from engine.api.protocol import PROTOCOL_VERSION

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


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()  # base64.b64encode without base64


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
    ping and close frames in; no extensions. The handshake is two steps: ``__init__`` connects
    and sends the request, ``accept`` reads the daemon's answer.

    It runs on the interpreter's own socket type (``_socket``), read through a buffer of its
    own: the ``socket`` module's enum conversions and ``makefile`` cost ~1.5 ms of every CLI
    start, ``create_connection`` another ~3 ms (it encodes the host with the idna codec, which
    loads unicodedata and stringprep) — none of which a numeric loopback address needs."""

    def __init__(self, info: DaemonInfo, timeout: float | None) -> None:
        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self.buf = bytearray()
        try:
            self.sock.settimeout(timeout)
            # requests go out as written: a request sent right behind another (subscribe, then
            # install) must not wait for the first one's ACK (Nagle and delayed ACKs: up to 40 ms)
            self.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            self.sock.connect(("127.0.0.1", info.port))
            self.key = _b64(os.urandom(16))
            self.sock.sendall((
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{info.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {info.token}\r\n\r\n"
            ).encode())
        except BaseException:
            self.sock.close()
            raise

    def accept(self) -> None:
        """Read the handshake's answer (ConnectionError when the daemon refused it)."""
        status = self._readline().decode("latin-1")
        headers: dict[str, str] = {}
        while (line := self._readline().decode("latin-1")) not in ("\r\n", "\n", ""):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if " 101 " not in status:
            raise ConnectionError(f"handshake refused: {status.strip()}")
        want = _b64(_sha1(self.key.encode() + _GUID).digest())
        if headers.get("sec-websocket-accept") != want:
            raise ConnectionError("handshake: bad Sec-WebSocket-Accept")

    def _fill(self, want: int) -> bool:
        """Receive more (at least one byte; ``want`` or more at once, within 64 KiB-1 MiB);
        False at the end of the stream."""
        chunk = self.sock.recv(min(max(want, 1 << 16), 1 << 20))
        self.buf += chunk
        return bool(chunk)

    def _readline(self, limit: int = 65536) -> bytes:
        """A line with its newline (at most ``limit`` bytes; what is left at the end)."""
        while (end := self.buf.find(b"\n", 0, limit)) < 0 and len(self.buf) < limit:
            if not self._fill(limit - len(self.buf)):
                break
        end = end + 1 if end >= 0 else min(len(self.buf), limit)
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill(n - len(self.buf)):
                raise _Closed("connection closed")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 1 << 16:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
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
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
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
            self._send_frame(0x8, (1000).to_bytes(2, "big"))
        self.sock.close()


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
        self._ws: _WebSocket | None = None
        self._failed: BaseException | None = None
        self._unanswered: set[int] = set()  # requests sent with ``reply=False``

    def open(self) -> SyncDaemonClient:
        if self._ws is None and self._failed is None:
            try:
                self._ws = _WebSocket(self.info, self.timeout)
            except (OSError, ValueError) as exc:
                self._failed = exc
        return self

    def __enter__(self) -> SyncDaemonClient:
        self.open()
        try:
            if self._failed is not None:
                raise self._failed
            assert self._ws is not None
            self._ws.accept()
            _check_hello(json.loads(self._ws.recv()))
        except (OSError, ValueError, _Closed) as exc:
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
        except (OSError, _Closed) as exc:
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
        self._ws.send(_request(req_id, method, params))
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
