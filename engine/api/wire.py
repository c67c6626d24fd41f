"""The daemon's wire for the blocking clients: finding a data folder's running daemon and just
enough RFC 6455 to talk to it, on the standard library's C parts only.

Both one-shot clients use it: ``engine.api.client.SyncDaemonClient`` (the CLI's commands) and
``engine.cli.quick`` (a whole command line sent to the daemon before anything else is imported,
issue 13), so it imports nothing of the engine and none of ``pathlib``, ``dataclasses`` or
``socket``: each costs milliseconds of a start that has ~10 to spend.
"""

from __future__ import annotations

import _socket  # the socket module's base: see WebSocket
import binascii
import contextlib
import fcntl
import json
import os
from typing import Any

from engine.core.locations import APP_NAME, ENV_PREFIX

PROTOCOL_VERSION = 1  # the daemon says it in its greeting; a client refuses another
MAX_REQUEST_BYTES = 64 * 1024  # a request is small; bigger ones get MESSAGE_TOO_LARGE
# A running daemon answers the handshake and greets within milliseconds, whatever it is doing
# (its event loop does nothing else). One that has not after this long is stopped or hung: a
# client says so now, instead of after its reply timeout (60 + 30 s for a one-shot CLI).
HANDSHAKE_TIMEOUT_S = 5.0


def not_answering(pid: int) -> str:
    """What a client says of a daemon that took its connection but not its handshake."""
    return (f"the engine daemon (pid {pid}) did not answer within {HANDSHAKE_TIMEOUT_S:.0f} s: "
            "it is stopped or hung, and nothing was sent to it (`kill -CONT` resumes a stopped "
            "one; ending it frees the data folder)")
INFO_FILE = "daemon.json"
LOCK_FILE = "daemon.lock"
MAX_REPLY_BYTES = 256 * 1024 * 1024  # a status with a long queue is big, not this big


def default_data_dir() -> str:
    """The engine's data folder when none is given: ``LAUNCHER_ENGINE_DATA_DIR`` or the
    platform's per-user data folder (the same rule as the engine's settings)."""
    env = os.environ.get(ENV_PREFIX + "DATA_DIR")
    if env:
        return os.path.expanduser(env)
    import platformdirs

    return str(platformdirs.user_data_dir(APP_NAME))


def request(req_id: int | str | None, method: str, params: dict[str, Any] | None) -> str:
    """A request's text (nulls left out)."""
    return json.dumps({"id": req_id, "method": method,
                       "params": {k: v for k, v in (params or {}).items() if v is not None}})


def hello_problem(hello: Any) -> str | None:
    """What is wrong with the daemon's greeting, or None: a client talks only to a daemon of
    its own protocol."""
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        return f"unexpected greeting {hello!r:.200}"
    if hello.get("protocol") != PROTOCOL_VERSION:
        return (f"the daemon speaks protocol {hello.get('protocol')}, this client "
                f"{PROTOCOL_VERSION}: restart the daemon from the same install")
    return None


def read_info(data_dir: str) -> tuple[int, int, str] | None:
    """What ``daemon.json`` says, (pid, port, token); None when it is missing or unreadable."""
    try:
        with open(os.path.join(data_dir, INFO_FILE), "rb") as fh:
            d = json.loads(fh.read())
        return int(d["pid"]), int(d["port"]), str(d["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_daemon(data_dir: str) -> tuple[int, int, str] | None:
    """The running daemon of this data dir, judged by its lock (not by a possibly stale file)."""
    try:
        fh = open(os.path.join(data_dir, LOCK_FILE), "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_info(data_dir)
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


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


class Closed(Exception):
    """The connection ended (the daemon closed it, or it broke)."""


class WebSocket:
    """Just enough RFC 6455 for a local client: masked text frames out; text, continuation,
    ping and close frames in; no extensions. The handshake is two steps: ``__init__`` connects
    and sends the request, ``accept`` reads the daemon's answer.

    It runs on the interpreter's own socket type (``_socket``), read through a buffer of its
    own: the ``socket`` module's enum conversions and ``makefile`` cost ~1.5 ms of every CLI
    start, ``create_connection`` another ~3 ms (it encodes the host with the idna codec, which
    loads unicodedata and stringprep) — none of which a numeric loopback address needs."""

    def __init__(self, port: int, token: str, timeout: float | None) -> None:
        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self.buf = bytearray()
        try:
            self.sock.settimeout(timeout)
            # requests go out as written: a request sent right behind another (subscribe, then
            # install) must not wait for the first one's ACK (Nagle and delayed ACKs: up to 40 ms)
            self.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            self.sock.connect(("127.0.0.1", port))
            self.key = _b64(os.urandom(16))
            self.sock.sendall((
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode())
        except BaseException:
            self.sock.close()
            raise

    def accept(self) -> None:
        """Read the handshake's answer (ConnectionError when the daemon refused it; TimeoutError
        after the socket's timeout)."""
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
                raise Closed("connection closed")
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
                raise Closed(f"frame of {n} bytes")
            payload = self._read(n)
            if opcode == 0x8:
                with contextlib.suppress(OSError):
                    self._send_frame(0x8, payload[:2])
                raise Closed(payload[2:].decode("utf-8", "replace") or "closed by the daemon")
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
