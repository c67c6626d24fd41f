"""The data plane's blocking half: one worker thread GETs one pack range over a kept-alive
socket, ``recv_into``s each block into a buffer it reuses, and processes the block right there
(zstd, BLAKE3 and ``pwritev`` release the GIL). The event loop only hears "block N is written"
(one ``call_soon_threadsafe`` per ~1 MiB block) and keeps every decision: which source, retries,
journal, progress. Under a speed limit the thread reads the block in pieces and sleeps for
the limiter's tokens before each (``Pacer``). Parsing and the meaning of a response are
``engine.core.httpwire``.

A thread cannot be cancelled, so it looks at a stop flag between blocks and at least every
``POLL_S`` while it waits for bytes; the caller sets the flag and waits for the thread before
the run's staging is closed.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from engine.core.fetchrules import Failure
from engine.core.httpwire import (
    MAX_HEAD_BYTES,
    HeadError,
    RangeRefusal,
    Target,
    head_end,
    judge_range_response,
    parse_head,
    parse_target,
    range_request,
)
from engine.core.planner import BlockJob, FetchRange
from engine.core.retry import StallDetector
from engine.core.sources import FailureKind

POLL_S = 0.25  # a waiting recv looks at the stop flag and the stall detector this often
MIN_RATE_BPS = 16 * 1024  # slower than this over a whole stall window: the edge is left
DRAIN_CHUNK = 256 * 1024

R = TypeVar("R")


class FetchFailed(Exception):
    def __init__(self, kind: FailureKind, detail: str, out_of_range: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.out_of_range = out_of_range  # HTTP 416: the range lies past the pack's end

    def failure(self, source_id: str, item: str | None = None) -> Failure:
        return Failure(source_id, self.kind, self.detail, self.out_of_range, item=item)

    @classmethod
    def refused(cls, refusal: RangeRefusal) -> FetchFailed:
        return cls(refusal.kind, refusal.detail, refusal.out_of_range)


class Stopped(Exception):
    """The thread gave the range back between blocks (or pieces): the run stops, or the caller
    asked for it back (``give_back``); the blocks it delivered are kept."""


class Pacer(Protocol):
    """The speed limit as a worker thread sees it (``engine.io.download`` binds the limiter)."""

    def piece(self) -> int:
        """0 when no limit applies now; else the bytes to read per paced piece."""
        ...

    def pace(self, n: int) -> bool:
        """Block until ``n`` more bytes may be read (or the stop flag is set); True when it
        had to wait."""
        ...


@dataclass(slots=True)
class RangeFetch(Generic[R]):
    """One range for one worker thread; ``received`` is read after it returns."""
    url: str
    range: FetchRange
    source_id: str
    stall_window_s: float
    connect_timeout_s: float
    # on this thread; must not keep the view. The view is read-only and nothing writes its
    # bytes until the call returns (the block processor hashes and writes them in place)
    process: Callable[[BlockJob, memoryview], R]
    deliver: Callable[[BlockJob, R, int], None]  # thread-safe: hands the result to the loop
    give_back: Callable[[], bool]  # checked between blocks: True → raise Stopped
    stop: threading.Event
    on_first_byte: Callable[[], None]  # thread-safe
    pacer: Pacer | None = None  # None: never limited
    # thread-safe: bytes of a paced piece as soon as it is read (a block under a low limit
    # takes seconds; progress moves with the pieces, the block's delivery carries the rest)
    on_piece: Callable[[int], None] | None = None
    # on this thread, when a receive waited POLL_S for nothing: what it holds back goes now
    on_idle: Callable[[], None] | None = None
    received: int = 0
    started: float = 0.0


# -- connections: an idle pool shared by the worker threads ------------------------------------
_idle: dict[tuple[str, str, int], list[tuple[socket.socket, float]]] = {}  # (socket, idle since)
IDLE_MAX_S = 30.0  # nginx's default keep-alive timeout is 75 s; others close sooner
IDLE_PER_EDGE = 64
_idle_lock = threading.Lock()
_tls: ssl.SSLContext | None = None
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_buffers = threading.local()


# Enough threads for every range the settings allow in flight at once (``connections`` ≤ 64 per
# task, ``max_concurrent_tasks`` ≤ 16), so no task's range ever waits for a thread another task
# holds: a speed-limited range sleeps in ``pace()`` on its thread, and with 64 threads a
# throttled task could hold them all while another task's ranges waited in the queue for as long
# as its slow ranges took (review, session 23: an unlimited 1 MiB range not started after 15 s).
# Threads are started only as ranges need them.
MAX_RANGE_THREADS = 64 * 16


def worker_pool() -> ThreadPoolExecutor:
    """The threads that run ranges (:data:`MAX_RANGE_THREADS`)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=MAX_RANGE_THREADS,
                                       thread_name_prefix="engine-net")
        return _pool


def close_idle_connections() -> None:
    with _idle_lock:
        socks = [s for group in _idle.values() for s, _ in group]
        _idle.clear()
    for s in socks:
        s.close()


def _take(target: Target) -> socket.socket | None:
    while True:
        with _idle_lock:
            group = _idle.get(target.key)
            sock, since = group.pop() if group else (None, 0.0)
        if sock is None:
            return None
        # an idle socket must have nothing to read: leftover bytes of the last response, or the
        # server's FIN, mean it cannot carry the next request; one idle too long is likely
        # closed by the server's keep-alive timeout by now
        dirty = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if dirty or time.monotonic() - since > IDLE_MAX_S or select.select([sock], [], [], 0)[0]:
            sock.close()
            continue
        return sock


def _put_back(target: Target, sock: socket.socket) -> None:
    with _idle_lock:
        group = _idle.setdefault(target.key, [])
        group.append((sock, time.monotonic()))
        stale = group[:-IDLE_PER_EDGE]  # more idle than threads can use
        del group[:-IDLE_PER_EDGE]
    for old, _ in stale:
        old.close()


def _host_arg(host: str) -> str | bytes:
    """An ASCII host name as bytes: ``getaddrinfo`` takes it as is, where a str goes through
    the idna codec, whose first use imports it (3-5 ms of the first range's connect, issue 13).
    A name with other characters keeps the codec's encoding (and its checks)."""
    return host.encode("ascii") if host.isascii() else host


def _open(target: Target, timeout_s: float, stop: threading.Event) -> socket.socket:
    """create_connection that looks at the stop flag every POLL_S."""
    deadline = time.monotonic() + timeout_s
    last: OSError = OSError("no address")
    for family, kind, proto, _, addr in socket.getaddrinfo(_host_arg(target.host), target.port,
                                                            0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            while err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                if stop.is_set():
                    raise Stopped()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                if select.select([], [sock], [], min(POLL_S, left))[1]:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last


def _connect(target: Target, timeout_s: float, source_id: str,
             stop: threading.Event) -> socket.socket:
    global _tls
    try:
        sock = _open(target, timeout_s, stop)
    except OSError as exc:
        raise FetchFailed(FailureKind.RESET, f"{source_id}: cannot connect: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.scheme == "https":
            if _tls is None:
                _tls = ssl.create_default_context()
            sock = _tls.wrap_socket(sock, server_hostname=target.host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise FetchFailed(FailureKind.RESET, f"{source_id}: TLS: {exc}") from exc
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(POLL_S)
    else:
        # a blocking socket with a kernel receive timeout: recv(MSG_WAITALL) then fills a whole
        # block in one call (one GIL release per block instead of one per ~64 KiB that
        # arrived) and still returns every POLL_S to look at the stop flag and the stall watch
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _receive_timeout(POLL_S))
    return sock


def _receive_timeout(seconds: float) -> bytes:
    """SO_RCVTIMEO's value: a DWORD of milliseconds on Windows (a struct timeval packed there
    reads as 0: wait forever — no stop checks, no stall watch), a struct timeval elsewhere."""
    if sys.platform == "win32":
        return struct.pack("I", max(1, int(seconds * 1000)))
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))


def _buffer(size: int) -> memoryview:
    """This thread's reused block buffer, at least ``size`` bytes."""
    buf: mmap.mmap | bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        # room for the blocks the publisher makes (up to 1.28 MiB stored), grown by a quarter
        # at least past them
        buf = _buffers.buf = _anonymous(max(size, 2 << 20, len(buf or b"") * 5 // 4))
    return memoryview(buf)


def _anonymous(size: int) -> mmap.mmap | bytearray:
    """Private anonymous memory: its pages are zeroed by the kernel as the first recv into them
    touches them, with the GIL released (a bytearray's memset held it, ~1 ms a MiB, for six
    threads at once at the start)."""
    if sys.platform == "win32":
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class _Body:
    """Reads a response's bytes: first what came in with the head, then the socket."""

    def __init__(self, sock: socket.socket, fetch: RangeFetch[R], watch: StallDetector) -> None:
        self.sock = sock
        self.fetch = fetch
        self.watch = watch
        self.head_buf = bytearray(MAX_HEAD_BYTES)
        self.pending = memoryview(b"")
        self.reported = 0  # bytes handed to ``on_piece`` since the last block was delivered

    def _recv(self, view: memoryview, whole: bool = True) -> int:
        """Receive into ``view``: ``whole`` waits for all of it (or POLL_S), else takes what
        arrived (a head's length is not known)."""
        whole = whole and not isinstance(self.sock, ssl.SSLSocket)
        flags = socket.MSG_WAITALL if whole else 0
        while True:
            try:
                n = self.sock.recv_into(view, len(view), flags)
            except (TimeoutError, BlockingIOError):  # POLL_S passed with nothing new
                n = -1
            except (OSError, ssl.SSLError) as exc:
                raise FetchFailed(FailureKind.RESET,
                                  f"{self.fetch.source_id}: {exc!r}") from exc
            now = time.monotonic()
            if n == 0:
                raise FetchFailed(FailureKind.RESET,
                                  f"{self.fetch.source_id}: connection closed early")
            self.watch.observe(max(n, 0), now)
            if self.watch.stalled(now):
                if n < 0 and self.fetch.received == 0:
                    detail = "no data (stalled)"
                else:
                    detail = (f"under {self.watch.min_bytes} bytes in {self.watch.window_s:.0f} s "
                              "(trickling)")
                raise FetchFailed(FailureKind.STALL, f"{self.fetch.source_id}: {detail}")
            if self.fetch.stop.is_set():
                raise Stopped()
            if n > 0:
                return n
            if self.fetch.on_idle is not None:
                self.fetch.on_idle()

    def read_head(self, reused: bool) -> bytes | None:
        """The response head. None: a kept-alive connection that the server had closed
        meanwhile answered nothing (the caller sends the request again, once, on a new one)."""
        got = searched = 0
        view = memoryview(self.head_buf)
        while True:
            end = head_end(self.head_buf, searched, got) if got else -1
            if end >= 0:
                self.pending = view[end:got]
                return bytes(self.head_buf[:end])
            if got == MAX_HEAD_BYTES:
                raise FetchFailed(FailureKind.CORRUPT,
                                  f"{self.fetch.source_id}: response head over {MAX_HEAD_BYTES} B")
            searched = got
            try:
                n = self._recv(view[got:], whole=False)
            except FetchFailed as exc:
                if reused and got == 0 and exc.kind is FailureKind.RESET:
                    return None
                raise
            got += n

    def read_into(self, view: memoryview) -> None:
        filled = 0
        if self.pending:
            take = min(len(self.pending), len(view))
            view[:take] = self.pending[:take]
            self.pending = self.pending[take:]
            filled = take
        while filled < len(view):
            filled += self._recv(view[filled:])

    def skip(self, size: int, paced: int) -> None:
        scratch = _buffer(DRAIN_CHUNK)[:DRAIN_CHUNK]
        while size:
            part = scratch[:min(size, DRAIN_CHUNK)]
            if paced:
                self.read_paced(part, paced)
            else:
                self.read_into(part)
            size -= len(part)

    def read_paced(self, view: memoryview, piece_size: int) -> None:
        """``read_into`` under a speed limit: tokens are taken before each piece, and the
        thread sleeps (leaving the socket unread) until they are paid for. Time spent waiting
        for tokens is not the edge's: the stall window starts again after a wait."""
        pacer = self.fetch.pacer
        assert pacer is not None
        for at in range(0, len(view), piece_size):
            piece = view[at:at + piece_size]
            if pacer.pace(len(piece)):
                self.watch.reset(time.monotonic())
            if self.fetch.stop.is_set():
                raise Stopped()
            self.read_into(piece)
            if self.fetch.on_piece is not None:
                self.fetch.on_piece(len(piece))
                self.reported += len(piece)


def fetch_range(fetch: RangeFetch[R]) -> None:
    """GET the range and process its blocks in order (on the calling worker thread). Raises
    ``FetchFailed`` (the source is judged by its kind), ``Stopped``, ``Unsupported`` (nothing
    was processed: the general client takes the range) or what ``process`` raises."""
    target = parse_target(fetch.url)
    if fetch.stop.is_set():  # cancelled while it waited for a pool thread
        raise Stopped()
    r = fetch.range
    fetch.started = time.monotonic()
    request = range_request(target, r.start, r.end)
    for attempt in (0, 1):
        sock = _take(target) if attempt == 0 else None
        reused = sock is not None
        if sock is None:
            sock = _connect(target, fetch.connect_timeout_s, fetch.source_id, fetch.stop)
        keep = False
        try:
            watch = StallDetector(fetch.stall_window_s,
                                  max(1, int(MIN_RATE_BPS * fetch.stall_window_s)),
                                  now=time.monotonic())
            try:
                sock.sendall(request)
            except (OSError, ssl.SSLError) as exc:
                if reused:
                    continue  # the idle connection was closed by the server: a fresh one
                raise FetchFailed(FailureKind.RESET, f"{fetch.source_id}: {exc!r}") from exc
            body = _Body(sock, fetch, watch)
            raw_head = body.read_head(reused)
            if raw_head is None:
                continue
            try:
                head = parse_head(raw_head)
                verdict = judge_range_response(head, r.start, r.end, r.pack, fetch.source_id)
            except (HeadError, ValueError) as exc:  # ValueError: a number no parser expected
                raise FetchFailed(FailureKind.CORRUPT, f"{fetch.source_id}: bad response head: "
                                  f"{exc}") from exc
            if isinstance(verdict, RangeRefusal):
                raise FetchFailed.refused(verdict)
            fetch.on_first_byte()
            _read_blocks(fetch, body)
            keep = verdict.reusable and not body.pending
            return
        finally:
            if keep:
                _put_back(target, sock)
            else:
                sock.close()
    raise FetchFailed(FailureKind.RESET, f"{fetch.source_id}: connection closed")  # unreachable


def _read_blocks(fetch: RangeFetch[R], body: _Body) -> None:
    position = fetch.range.start
    for job in fetch.range.blocks:
        if fetch.stop.is_set() or fetch.give_back():
            raise Stopped()
        paced = 0 if fetch.pacer is None else fetch.pacer.piece()
        gap = job.offset - position
        if gap > 0:  # a bridged gap: read and drop
            body.skip(gap, paced)
        view = _buffer(job.stored_size)[:job.stored_size]
        if paced:
            body.read_paced(view, paced)
        else:
            body.read_into(view)
        fetch.received += gap + job.stored_size
        position = job.offset + job.stored_size
        # read-only: no other thread writes this thread's buffer, so the block processor
        # hashes and writes it where it is (a writable one it would copy first)
        result = fetch.process(job, view.toreadonly())
        fetch.deliver(job, result, gap + job.stored_size - body.reported)
        body.reported = 0
