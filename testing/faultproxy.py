"""A real fault-injecting HTTP reverse proxy for network-fault tests.

The proxy listens on a loopback address and forwards every request to an upstream HTTP(S)
origin (a test server or a real CDN edge), streaming the response back in bounded 64 KiB
pieces.  A *fault* can be armed at any time from any thread; it then applies to matching
requests:

* ``HTTP_500`` / ``HTTP_503`` / ``HTTP_403`` -- answer at once with that status and a small
  text body; the upstream is not contacted.
* ``RESET``    -- forward ``after_bytes`` body bytes, then abort the TCP connection with an RST
  (``SO_LINGER`` 0 + ``transport.abort()``): the client sees "connection reset by peer".
* ``STALL``    -- forward ``after_bytes`` body bytes, then send nothing more while holding the
  connection open until the proxy stops (or ``stall_timeout``, 120 s by default) and then
  abort it.  ``stop()`` wakes stalled handlers, so it never hangs on them.
* ``CORRUPT``  -- every body byte from offset ``after_bytes`` on is inverted (XOR 0xFF); the
  length and headers are unchanged.
* ``TRUNCATE`` -- headers (with the full ``Content-Length``) and ``after_bytes`` body bytes are
  sent, then the connection is closed cleanly (FIN): the client sees an incomplete body.
* ``SLOW``     -- body bytes after ``after_bytes`` are paced to ``rate_bps`` bytes per second.

Mid-stream faults (RESET/STALL/CORRUPT/TRUNCATE/SLOW) fire only when the body has more than
``after_bytes`` bytes; a shorter body passes through untouched and is not counted in
``faults_injected`` (it still consumes one of ``times``).  Response headers are always sent
before a mid-stream fault fires, even with ``after_bytes=0``.

Usage::

    with FaultProxy("http://127.0.0.1:8123") as proxy:
        proxy.set_fault(Fault.RESET, after_bytes=1 << 20, times=1)
        download(proxy.url + "/chunks/abc")

The server runs in a daemon thread with its own asyncio event loop, so synchronous tests,
async tests (on another loop) and subprocesses can all use ``proxy.url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import socket
import struct
import threading
import time
from types import TracebackType

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

try:  # POSIX only; used to wait for the kernel send queue to drain before an RST
    import fcntl
    import termios
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    termios = None  # type: ignore[assignment]

__all__ = ["Fault", "FaultProxy", "ProxiedRequest"]

CHUNK_SIZE = 64 * 1024

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded in either direction.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Additionally not copied from the client request: aiohttp derives these from the upstream URL
# and the body it sends.
_REQUEST_SKIP = _HOP_BY_HOP | {"host", "content-length"}

_FLIP = bytes(255 - i for i in range(256))  # bytes.translate table: XOR 0xFF


class Fault(enum.StrEnum):
    NONE = "none"
    HTTP_500 = "http_500"
    HTTP_503 = "http_503"
    HTTP_403 = "http_403"
    RESET = "reset"
    STALL = "stall"
    CORRUPT = "corrupt"
    TRUNCATE = "truncate"
    SLOW = "slow"


_STATUS_FAULTS: dict[Fault, int] = {Fault.HTTP_500: 500, Fault.HTTP_503: 503, Fault.HTTP_403: 403}


@dataclasses.dataclass(frozen=True)
class _FaultSpec:
    fault: Fault = Fault.NONE
    after_bytes: int = 0
    path_contains: str | None = None
    rate_bps: int | None = None


@dataclasses.dataclass(frozen=True)
class ProxiedRequest:
    """One request seen by the proxy (see ``FaultProxy.history``)."""

    method: str
    path_qs: str
    range: str | None
    fault: Fault  # the fault armed for this request (NONE if it passed through)


class FaultProxy:
    """Loopback reverse proxy to ``upstream`` that injects network faults on demand."""

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        stall_timeout: float = 120.0,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"FaultProxy only binds loopback addresses, not {host!r}")
        up = URL(upstream)
        if up.scheme not in ("http", "https") or not up.host:
            raise ValueError(f"upstream must be an http(s) URL, not {upstream!r}")
        self._upstream = str(up).rstrip("/")
        self._host = host
        self._port = port
        self._stall_timeout = stall_timeout

        self._lock = threading.Lock()
        self._spec = _FaultSpec()
        self._remaining: int | None = None
        self._requests = 0
        self._faults_injected = 0
        self._bytes_sent = 0
        self._history: list[ProxiedRequest] = []

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._start_error: BaseException | None = None
        self._bound_port: int | None = None
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="FaultProxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("FaultProxy did not start within 30 s")
        if self._start_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise RuntimeError("FaultProxy failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Stop serving; wakes stalled handlers and closes all connections.  Idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("FaultProxy not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound_port}"

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("FaultProxy not started")
        return self._bound_port

    @property
    def upstream(self) -> str:
        return self._upstream

    # ------------------------------------------------------------------ faults & counters

    def set_fault(
        self,
        fault: Fault,
        *,
        after_bytes: int = 0,
        times: int | None = None,
        path_contains: str | None = None,
        rate_bps: int | None = None,
    ) -> None:
        """Arm ``fault`` for matching requests (replaces any previously armed fault).

        after_bytes: body bytes passed through before a mid-stream fault fires.
        times: inject only on the next N matching requests, then revert to NONE (None = forever).
        path_contains: only requests whose path (incl. query) contains this substring match.
        rate_bps: bytes per second for SLOW (required for SLOW).
        """
        fault = Fault(fault)
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0 or None")
        if fault is Fault.SLOW and (rate_bps is None or rate_bps <= 0):
            raise ValueError("Fault.SLOW needs a positive rate_bps")
        with self._lock:
            if fault is Fault.NONE or times == 0:
                self._spec, self._remaining = _FaultSpec(), None
            else:
                self._spec = _FaultSpec(fault, after_bytes, path_contains, rate_bps)
                self._remaining = times

    def clear_fault(self) -> None:
        self.set_fault(Fault.NONE)

    @property
    def fault(self) -> Fault:
        """The currently armed fault (NONE once a ``times`` budget is used up)."""
        with self._lock:
            return self._spec.fault

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def faults_injected(self) -> int:
        with self._lock:
            return self._faults_injected

    @property
    def bytes_sent(self) -> int:
        """Response body bytes handed to clients (after corruption/truncation)."""
        with self._lock:
            return self._bytes_sent

    @property
    def history(self) -> list[ProxiedRequest]:
        """Snapshot of every request seen since start / ``reset_counters()``."""
        with self._lock:
            return list(self._history)

    def reset_counters(self) -> None:
        with self._lock:
            self._requests = 0
            self._faults_injected = 0
            self._bytes_sent = 0
            self._history.clear()

    def _take_spec(self, request: web.Request) -> _FaultSpec:
        with self._lock:
            self._requests += 1
            spec = self._spec
            if spec.fault is not Fault.NONE and (
                spec.path_contains is None or spec.path_contains in request.path_qs
            ):
                if self._remaining is not None:
                    self._remaining -= 1
                    if self._remaining <= 0:
                        self._spec, self._remaining = _FaultSpec(), None
            else:
                spec = _FaultSpec()
            self._history.append(
                ProxiedRequest(
                    request.method, request.path_qs, request.headers.get("Range"), spec.fault
                )
            )
            return spec

    def _count_fault(self) -> None:
        with self._lock:
            self._faults_injected += 1

    def _count_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes_sent += n

    # ------------------------------------------------------------------ server thread

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:
            if not ready.is_set():
                self._start_error = exc
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._stop_event = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
            await site.start()
            self._bound_port = int(runner.addresses[0][1])
            ready.set()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    # ------------------------------------------------------------------ request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        spec = self._take_spec(request)
        fault = spec.fault

        if fault in _STATUS_FAULTS:
            self._count_fault()
            status = _STATUS_FAULTS[fault]
            return web.Response(status=status, text=f"faultproxy: injected {status}\n")

        assert self._session is not None
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            if name.lower() not in _REQUEST_SKIP:
                headers.add(name, value)
        body = await request.read() if request.body_exists else None
        target = URL(self._upstream + request.raw_path, encoded=True)

        try:
            up = await self._session.request(
                request.method,
                target,
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"faultproxy: upstream error: {exc!r}\n")
        try:
            return await self._relay(request, up, spec)
        finally:
            if up.content.at_eof():
                up.release()  # keep the pooled upstream connection
            else:
                up.close()  # body not fully read: drop the upstream connection

    async def _relay(
        self, request: web.Request, up: aiohttp.ClientResponse, spec: _FaultSpec
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for name, value in up.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                resp.headers.add(name, value)
        await resp.prepare(request)

        fault = spec.fault
        armed = fault is not Fault.NONE
        fired = False
        sent = 0
        slow_piece = 1
        slow_start = 0.0
        slow_bytes = 0
        if fault is Fault.SLOW:
            assert spec.rate_bps is not None
            slow_piece = max(1, min(CHUNK_SIZE, spec.rate_bps // 50))  # ~20 ms steps

        while True:
            try:
                data = await up.content.read(CHUNK_SIZE)
            except (aiohttp.ClientError, OSError):
                # Upstream broke mid-body: pass the failure on instead of ending cleanly.
                _abort(request, rst=True)
                return resp
            if not data:
                break
            while data:
                if armed and not fired and sent >= spec.after_bytes:
                    fired = True
                    self._count_fault()
                    if fault is Fault.RESET:
                        await _flush(request)
                        _abort(request, rst=True)
                        return resp
                    if fault is Fault.TRUNCATE:
                        await _flush(request)
                        _abort(request, rst=False)
                        return resp
                    if fault is Fault.STALL:
                        await self._stall()
                        _abort(request, rst=True)
                        return resp
                    if fault is Fault.SLOW:
                        slow_start = time.monotonic()
                if armed and not fired:
                    n = min(len(data), spec.after_bytes - sent)
                elif fired and fault is Fault.SLOW:
                    n = min(len(data), slow_piece)
                else:
                    n = len(data)
                piece, data = data[:n], data[n:]
                if fired and fault is Fault.CORRUPT:
                    piece = piece.translate(_FLIP)
                elif fired and fault is Fault.SLOW:
                    # Release each piece when its last byte is due at rate_bps.
                    assert spec.rate_bps is not None
                    slow_bytes += n
                    delay = slow_start + slow_bytes / spec.rate_bps - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                # Counted before the write: a client that has read the last byte must see
                # it counted, and the write can hand the bytes over before it returns.
                sent += n
                self._count_bytes(n)
                await resp.write(piece)

        await resp.write_eof()
        return resp

    async def _stall(self) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=self._stall_timeout)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _flush(request: web.Request, timeout: float = 1.0) -> None:
    """Best effort: wait until written bytes have left asyncio's buffer and been ACKed.

    Makes RESET/TRUNCATE deliver exactly ``after_bytes`` body bytes when the client is reading
    (an RST discards unsent data in the kernel send queue).  Bounded by ``timeout``.
    """
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not transport.is_closing():
        if transport.get_write_buffer_size() == 0 and _unacked(sock) == 0:
            return
        await asyncio.sleep(0.002)


def _unacked(sock: socket.socket | None) -> int:
    """Bytes in the kernel send queue not yet ACKed by the peer (0 if unknown)."""
    if sock is None or fcntl is None or termios is None:
        return 0
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return 0
    return int(struct.unpack("i", buf)[0])


def _abort(request: web.Request, *, rst: bool) -> None:
    """Drop the client connection: RST (abortive) or FIN after flushing (clean close)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
