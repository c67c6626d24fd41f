"""Faults the threaded range client met in review (session 21), each on real loopback sockets:
a stop honoured while a block trickles in and while connecting, a kept-alive socket with bytes
left after a response never reused, non-ASCII "digits" in a head judged as a bad head (and the
download failing over), a pause that waits for no other task's ranges, TLS and IPv6 paths,
per-file write counts, and a burst of block records journaled in full. Responsiveness bounds
are generous (seconds against the 30 s a hang took): they catch hangs, not speed."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from engine.core.httpwire import HeadError, judge_range_response, parse_head
from engine.core.planner import BlockJob, FetchRange
from engine.core.sources import FailureKind
from engine.io.rangeclient import (
    FetchFailed,
    RangeFetch,
    Stopped,
    _idle,
    close_idle_connections,
    fetch_range,
)
from patcher.manifest import Codec
from tests.integration.test_rangeclient import LoopbackServer, range_requests

PACK = "cd" * 32
DATA = bytes(range(256)) * 4096 * 8  # 8 MiB


class Server(LoopbackServer):
    """One-handler loopback server: ``handler(conn, first, last, nreq)`` answers a request."""

    def __init__(self, handler, family=socket.AF_INET, host="127.0.0.1") -> None:
        self.handler = handler
        self.requests = 0
        super().__init__(family, host)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            for _, first, last in range_requests(conn):
                self.requests += 1
                try:
                    if self.handler(conn, first, last, self.requests) is False:
                        return
                except OSError:
                    return



def head(first: int, last: int, extra: str = "") -> bytes:
    return (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {last - first + 1}\r\n"
            f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n{extra}\r\n").encode()


def one_block(off: int, size: int) -> FetchRange:
    return FetchRange(PACK, off, off + size, (BlockJob(0, PACK, off, size, size, Codec.RAW, ()),))


def run(port: int, r: FetchRange, stop: threading.Event | None = None, window: float = 30.0):
    got: list[bytes] = []
    fetch = RangeFetch(f"http://127.0.0.1:{port}/p/packs/{PACK}.pack", r, "edge", window, 5.0,
                       lambda job, view: bytes(view), lambda job, data, n: got.append(data),
                       lambda: False, stop or threading.Event(), lambda: None)
    fetch_range(fetch)
    return got


@pytest.fixture(autouse=True)
def _clean():
    close_idle_connections()
    yield
    close_idle_connections()


def trickle(conn, first, last, n):
    """Answers at 64 KiB/s: over MIN_RATE_BPS, so never "stalled", and a 2 MiB block takes
    ~32 s."""
    conn.sendall(head(first, last))
    body = DATA[first:last + 1]
    for i in range(0, len(body), 8192):
        conn.sendall(body[i:i + 8192])
        time.sleep(0.125)
    return False


# 1. stop flag not honoured while a block trickles in above the stall rate ------------------
def test_stop_is_honoured_while_a_block_trickles_in() -> None:
    srv = Server(trickle)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        run(srv.port, one_block(0, 2 << 20), stop=stop)  # a 2 MiB block: ~32 s at 64 KiB/s
    took = time.monotonic() - started
    srv.close()
    assert took < 10.0, f"stop set at 0.5 s, fetch_range returned after {took:.1f} s"


# 2. a kept-alive socket with bytes left after the body is reused for the next request -------
def test_extra_bytes_after_a_body_do_not_fail_the_next_range_on_a_healthy_edge() -> None:
    def extra(conn, first, last, n):
        conn.sendall(head(first, last) + DATA[first:last + 1])
        if n == 1:
            time.sleep(0.05)
            conn.sendall(b"\r\nHTTP/1.1 200 OK\r\n\r\ntrailing junk")  # a misbehaving edge
        return True

    srv = Server(extra)
    assert run(srv.port, one_block(0, 1000)) == [DATA[:1000]]
    time.sleep(0.2)
    try:
        got = run(srv.port, one_block(5000, 1000))
    except FetchFailed as exc:  # the *next* range is blamed on the edge
        pytest.fail(f"stale bytes of the previous response read as this one's head: "
                    f"{exc.kind.name}: {exc.detail}")
    assert got == [DATA[5000:6000]]
    srv.close()


# 3. a Content-Length / status with latin-1 "digits" escapes as ValueError --------------------
@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 206 Partial\r\nContent-Length: \xb2\r\nContent-Range: bytes 0-1/9\r\n\r\n",
    b"HTTP/1.1 2\xb26 Partial\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 206 Partial\r\nContent-Length: 2\r\nContent-Range: bytes \xb9-1/9\r\n\r\n",
])
def test_garbage_digits_in_a_head_are_a_head_error(raw: bytes) -> None:
    with pytest.raises(HeadError):
        judge_range_response(parse_head(raw), 0, 2, PACK, "edge")


def test_garbage_digits_over_a_socket_are_a_fetch_failure() -> None:
    def bad(conn, first, last, n):
        conn.sendall(b"HTTP/1.1 206 Partial\r\nContent-Length: \xb2\r\n"
                     b"Content-Range: bytes 0-999/9999\r\n\r\n")
        return False

    srv = Server(bad)
    with pytest.raises(FetchFailed) as caught:  # ValueError escapes instead
        run(srv.port, one_block(0, 1000))
    assert caught.value.kind is FailureKind.CORRUPT
    srv.close()


# 4. stop not honoured while connecting (SYN to a full accept queue) ------------------------
def test_stop_is_honoured_while_connecting() -> None:
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(0)
    port = lsn.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue: further SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises((Stopped, FetchFailed)):
        run(port, one_block(0, 1000), stop=stop)  # connect_timeout_s=5.0
    took = time.monotonic() - started
    lsn.close()
    assert took < 10.0, f"stop set at 0.3 s, fetch_range returned after {took:.1f} s"


# 5. consequences at the download() level --------------------------------------------------
import asyncio  # noqa: E402

import aiohttp  # noqa: E402

from engine.core.retry import RetryPolicy  # noqa: E402
from engine.core.sources import CdnSource, SourcePool  # noqa: E402
from engine.io.download import BlockSink, DownloadContext, download  # noqa: E402
from engine.io.limiter import AsyncRateLimiter  # noqa: E402


def healthy(conn, first, last, n):
    conn.sendall(head(first, last) + DATA[first:last + 1])
    return True


async def _download(ports: list[int], r: FetchRange, sink_got: list) -> DownloadContext:
    sources = [CdnSource(f"e{i}", f"http://127.0.0.1:{p}", "", time.time() + 3600, 10 - i)
               for i, p in enumerate(ports)]
    async with aiohttp.ClientSession() as session:
        ctx = DownloadContext(lambda: session, SourcePool(sources), AsyncRateLimiter(),
                              RetryPolicy(base_delay=0.01), "p", "t",
                              refresh=lambda: asyncio.sleep(0, tuple(sources)))
        await download(ctx, [r], BlockSink(lambda job, v: bytes(v),
                                           lambda job, res: sink_got.append((job.index, res))), 4)
        return ctx


def test_garbage_head_fails_over_instead_of_crashing_the_download() -> None:
    def bad(conn, first, last, n):
        conn.sendall(b"HTTP/1.1 206 Partial\r\nContent-Length: \xb2\r\n"
                     b"Content-Range: bytes 0-999/9999\r\n\r\n")
        return False

    b, g = Server(bad), Server(healthy)
    got: list = []
    asyncio.run(_download([b.port, g.port], one_block(0, 1000), got))  # ExceptionGroup[ValueError]
    assert got == [(0, DATA[:1000])]


def test_cancelling_a_download_while_a_block_trickles_returns_promptly() -> None:
    srv = Server(trickle)

    async def main() -> float:
        task = asyncio.create_task(_download([srv.port], one_block(0, 2 << 20), []))
        await asyncio.sleep(0.5)
        task.cancel()  # pause / shutdown
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert took < 10.0, f"cancel (pause/shutdown) took {took:.1f} s"


# 6. TLS and IPv6 paths ----------------------------------------------------------------------
import ssl  # noqa: E402
import subprocess  # noqa: E402

import engine.io.rangeclient as rc  # noqa: E402


class TlsServer(Server):
    def __init__(self, handler, cert: str, key: str, family=socket.AF_INET, host="127.0.0.1"):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        super().__init__(handler, family, host)

    def _serve(self, conn):
        try:
            conn = self.ctx.wrap_socket(conn, server_side=True)
        except OSError:
            return
        super()._serve(conn)


@pytest.fixture
def tls(tmp_path, monkeypatch):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    rc._tls = None
    yield str(cert), str(key)
    rc._tls = None


def run_url(url: str, r: FetchRange, stop=None, window=30.0):
    got: list[bytes] = []
    fetch = RangeFetch(url, r, "edge", window, 5.0, lambda job, view: bytes(view),
                       lambda job, data, n: got.append(data), lambda: False,
                       stop or threading.Event(), lambda: None)
    fetch_range(fetch)
    return got


def test_tls_blocks_and_reuse(tls) -> None:
    srv = TlsServer(healthy, *tls)
    url = f"https://localhost:{srv.port}/p/packs/{PACK}.pack"
    r = FetchRange(PACK, 0, 3 << 20, tuple(BlockJob(i, PACK, i << 20, 1 << 20, 1 << 20, Codec.RAW, ())
                                           for i in range(3)))
    assert b"".join(run_url(url, r)) == DATA[:3 << 20]
    assert run_url(url, one_block(7, 100)) == [DATA[7:107]]
    assert srv.connections == 1


def test_tls_stop_while_trickling(tls) -> None:
    srv = TlsServer(trickle, *tls)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Stopped):
        run_url(f"https://localhost:{srv.port}/x", one_block(0, 1 << 20), stop=stop)
    assert time.monotonic() - t0 < 10.0


def test_tls_extra_bytes_after_body(tls) -> None:
    def extra(conn, first, last, n):
        conn.sendall(head(first, last) + DATA[first:last + 1])
        if n == 1:
            time.sleep(0.05)
            conn.sendall(b"junk after the body")
        return True

    srv = TlsServer(extra, *tls)
    url = f"https://localhost:{srv.port}/x"
    run_url(url, one_block(0, 1000))
    time.sleep(0.2)
    assert run_url(url, one_block(5000, 1000)) == [DATA[5000:6000]]


def test_ipv6_literal() -> None:
    s = socket.socket(socket.AF_INET6)
    s.bind(("::1", 0))
    s.listen(4)
    port = s.getsockname()[1]
    seen: list[bytes] = []

    def serve():
        conn, _ = s.accept()
        raw = conn.recv(65536)
        seen.append(raw)
        conn.sendall(head(0, 99) + DATA[:100])
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    assert run_url(f"http://[::1]:{port}/x", one_block(0, 100)) == [DATA[:100]]
    assert f"Host: [::1]:{port}".encode() in seen[0]


def test_a_pooled_socket_the_server_closed_is_not_reused() -> None:
    def close_after(conn, first, last, n):
        conn.sendall(head(first, last) + DATA[first:last + 1])
        time.sleep(0.05)
        return False  # server ends the kept-alive connection

    srv = Server(close_after)
    run(srv.port, one_block(0, 1000))
    time.sleep(0.3)
    # the pooled socket the server closed is dropped when next taken, not reused
    assert len([s for g in _idle.values() for s, _ in g]) == 1
    assert run(srv.port, one_block(5000, 1000)) == [DATA[5000:6000]]
    assert srv.connections == 2 and srv.requests == 2


# 7. pausing a task is prompt while another task's 64 slow ranges run: its range has a thread
# of its own (the pool holds every range the settings allow) and is stopped, not waited for
def test_cancel_of_a_range_running_beside_another_tasks_ranges_is_prompt() -> None:
    a_srv, b_srv = Server(trickle), Server(trickle)  # each edge: 8 s per 512 KiB range
    a_ranges = [one_block(i * 1000, 512 << 10) for i in range(64)]  # connections = 64

    async def main() -> float:
        async def dl(port, ranges, workers):
            sources = [CdnSource("e", f"http://127.0.0.1:{port}", "", time.time() + 3600, 1)]
            async with aiohttp.ClientSession() as session:
                ctx = DownloadContext(lambda: session, SourcePool(sources), AsyncRateLimiter(),
                                      RetryPolicy(), "p", "t",
                                      refresh=lambda: asyncio.sleep(0, tuple(sources)))
                await download(ctx, ranges, BlockSink(lambda j, v: None, lambda j, r: None), workers)
        a = asyncio.create_task(dl(a_srv.port, a_ranges, 64))
        await asyncio.sleep(0.5)
        b = asyncio.create_task(dl(b_srv.port, [one_block(0, 512 << 10)], 1))  # second task
        await asyncio.sleep(0.5)
        b.cancel()  # the player pauses task B
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await b
        took = time.monotonic() - t0
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        return took

    took = asyncio.run(main())
    assert took < 10.0, f"pausing task B took {took:.1f} s (waited for task A's ranges)"


# 8. per-file summary: one chunk written twice to a file and to another file ------------------
def test_block_written_counts_every_write(tmp_path) -> None:
    import blake3

    from engine.core.planner import ChunkTarget, ChunkWrite
    from engine.io.blockio import process_block
    from engine.io.staging import Staging
    from patcher.manifest import FileEntry, Manifest

    x, y = b"x" * 10, b"y" * 7
    manifest = Manifest("p", "1", (FileEntry("a.bin", 27, 0o644, "e3" * 32, ()),
                                   FileEntry("b.bin", 10, 0o644, "e3" * 32, ())), (), {})
    staging = Staging(tmp_path / "game", "t", manifest)
    staging.prepare([0, 1])
    job = BlockJob(0, "p", 0, 17, 17, Codec.RAW, (
        ChunkTarget(blake3.blake3(x).hexdigest(), 0, 10,
                    (ChunkWrite(0, 0), ChunkWrite(1, 0), ChunkWrite(0, 10))),
        ChunkTarget(blake3.blake3(y).hexdigest(), 10, 7, (ChunkWrite(0, 20),))))
    res = process_block(job, memoryview(x + y), staging)
    staging.close()
    assert res.per_file == {0: (3, 27), 1: (1, 10)}
    assert (staging.path(0)).read_bytes() == x + x + y and staging.path(1).read_bytes() == x


def test_blocks_processed_before_a_failure_are_recorded_once_and_not_fetched_again() -> None:
    """A range thread hands its results to the loop in batches: the blocks it processed before
    its edge broke still reach the sink (handed over as the thread ends), and the other edge is
    asked only for the rest; every block is recorded once, in order."""
    size, count, broken_after = 4096, 40, 25
    blocks = tuple(BlockJob(i, PACK, i * size, size, size, Codec.RAW, ()) for i in range(count))
    r = FetchRange(PACK, 0, size * count, blocks)

    def breaks(conn, first, last, n):
        end = min(last + 1, broken_after * size)
        conn.sendall(head(first, last) + DATA[first:end])
        return False  # closed mid-body

    asked: list[int] = []

    def healthy_asked(conn, first, last, n):
        asked.append(first)
        return healthy(conn, first, last, n)

    b, g = Server(breaks), Server(healthy_asked)
    got: list = []
    asyncio.run(_download([b.port, g.port], r, got))
    assert [i for i, _ in got] == list(range(count))
    assert all(data == DATA[i * size:(i + 1) * size] for i, data in got)
    assert b.requests == 1 and asked == [broken_after * size]


def test_a_block_held_for_its_batch_is_handed_over_while_the_edge_stalls() -> None:
    """Blocks that came within one hand-over interval wait for the next; when the edge then
    goes quiet, the thread hands them over after a receive waited POLL_S for nothing, not
    when the stall ends."""
    size, count, stall_s = 4096, 3, 1.5
    blocks = tuple(BlockJob(i, PACK, i * size, size, size, Codec.RAW, ()) for i in range(count))
    r = FetchRange(PACK, 0, size * count, blocks)
    resumed: list[float] = []

    def stalls(conn, first, last, n):
        conn.sendall(head(first, last) + DATA[first:first + 2 * size])
        time.sleep(stall_s)
        resumed.append(time.monotonic())
        conn.sendall(DATA[first + 2 * size:last + 1])
        return True

    srv = Server(stalls)
    recorded: list[tuple[int, float]] = []

    async def main() -> None:
        sources = [CdnSource("e0", f"http://127.0.0.1:{srv.port}", "", time.time() + 3600, 10)]
        async with aiohttp.ClientSession() as session:
            ctx = DownloadContext(lambda: session, SourcePool(sources), AsyncRateLimiter(),
                                  RetryPolicy(base_delay=0.01), "p", "t",
                                  refresh=lambda: asyncio.sleep(0, tuple(sources)))
            await download(ctx, [r], BlockSink(lambda job, v: bytes(v), lambda job, res:
                                               recorded.append((job.index, time.monotonic()))), 1)

    asyncio.run(main())
    assert [i for i, _ in recorded] == [0, 1, 2]
    assert recorded[1][1] < resumed[0] - 0.5  # block 1 came before the stall ended
