"""Speed-limited ranges on the worker threads (the event loop no longer reads limited bytes):
a limited range arrives byte-exact in paced pieces that add up to every byte read, gaps
included; a stop ends a wait for tokens; lifting a limit releases a waiting thread at once.
And the staging keeps a file's descriptor open for a write in flight when the file is closed."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.io.download import TaskPacer
from engine.io.limiter import AsyncRateLimiter
from engine.io.rangeclient import RangeFetch, Stopped, close_idle_connections, fetch_range
from engine.io.staging import Staging
from patcher.manifest import FileEntry, Manifest
from tests.integration.test_rangeclient import DATA, PACK, ScriptedServer, blocks


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.close()
    close_idle_connections()


class CountingPacer:
    """A limit of ``piece`` bytes per paced read that never waits; records every charge."""

    def __init__(self, piece: int) -> None:
        self.size = piece
        self.charged: list[int] = []

    def piece(self) -> int:
        return self.size

    def pace(self, n: int) -> bool:
        self.charged.append(n)
        return False


class Counted:
    """Bytes reported to progress: by delivered blocks and by paced pieces."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.pieces: list[int] = []


def fetch(server: ScriptedServer, spans: list[tuple[int, int]], pacer: object,
          stop: threading.Event | None = None, counted: Counted | None = None
          ) -> tuple[list[tuple[int, bytes]], RangeFetch[bytes]]:
    got: list[tuple[int, bytes]] = []
    c = counted or Counted()

    def deliver(job: object, data: bytes, n: int) -> None:
        got.append((job.index, data))  # type: ignore[attr-defined]
        c.delivered.append(n)

    f: RangeFetch[bytes] = RangeFetch(
        f"http://127.0.0.1:{server.port}/p/packs/{PACK}.pack", blocks(spans), "edge", 10.0, 5.0,
        lambda job, view: bytes(view), deliver, lambda: False, stop or threading.Event(),
        lambda: None, pacer=pacer, on_piece=c.pieces.append)  # type: ignore[arg-type]
    fetch_range(f)
    return got, f


def test_a_limited_range_arrives_byte_exact_in_paced_pieces(server: ScriptedServer) -> None:
    pacer = CountingPacer(64 * 1024)
    counted = Counted()
    got, f = fetch(server, [(1000, 300_000), (400_000, 5)], pacer, counted=counted)  # a gap
    assert got == [(0, DATA[1000:301_000]), (1, DATA[400_000:400_005])]
    assert sum(pacer.charged) == f.received == 400_005 - 1000  # the gap's bytes are charged too
    assert max(pacer.charged) <= 64 * 1024
    assert len(pacer.charged) >= 300_000 // (64 * 1024)
    # progress moves with the pieces (the gap's too: wire bytes); every byte counted once
    assert counted.pieces and sum(counted.pieces) + sum(counted.delivered) == f.received


def test_an_unlimited_pacer_reads_whole_blocks_without_charging(server: ScriptedServer) -> None:
    pacer = CountingPacer(0)
    counted = Counted()
    got, _ = fetch(server, [(0, 200_000)], pacer, counted=counted)
    assert got == [(0, DATA[:200_000])]
    assert pacer.charged == [] and counted.pieces == [] and counted.delivered == [200_000]


def test_a_stop_ends_a_wait_for_tokens(server: ScriptedServer) -> None:
    limiter = AsyncRateLimiter()
    limiter.set_task("t", 1.0)  # one byte a second: the first piece waits ~days
    stop = threading.Event()
    waiting = threading.Event()
    outcome: list[BaseException] = []

    class Watched:
        inner = TaskPacer(limiter, "t", stop)

        def piece(self) -> int:
            return self.inner.piece()

        def pace(self, n: int) -> bool:
            waiting.set()
            return self.inner.pace(n)

    def run() -> None:
        try:
            fetch(server, [(0, 100_000)], Watched(), stop)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert waiting.wait(30)  # in the limiter's wait, not before the request
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Stopped)


def test_lifting_a_limit_releases_a_waiting_thread() -> None:
    limiter = AsyncRateLimiter()
    limiter.set_task("t", 1.0)
    waited: list[bool] = []
    entered = threading.Event()

    def run() -> None:
        entered.set()
        # poll_s of an hour: only the limiter's notification can end this wait early
        waited.append(limiter.pace(1 << 20, "t", threading.Event(), 3600.0))

    t = threading.Thread(target=run)
    t.start()
    entered.wait(30)
    while not waited and t.is_alive():
        limiter.remove_task("t")  # repeated: the thread may not be waiting yet
        t.join(0.05)
    t.join(30)
    assert not t.is_alive()
    assert limiter.rate_for("t") is None


def test_rate_for_is_the_tightest_limit() -> None:
    limiter = AsyncRateLimiter(5e6)
    assert limiter.rate_for("t") == 5e6
    limiter.set_task("t", 1e6)
    assert limiter.rate_for("t") == 1e6 and limiter.rate_for("u") == 5e6
    limiter.set_global(None)
    assert limiter.rate_for("t") == 1e6 and limiter.rate_for(None) is None


def test_a_pacer_piece_follows_the_limit() -> None:
    limiter = AsyncRateLimiter()
    pacer = TaskPacer(limiter, "t", threading.Event())
    assert pacer.piece() == 0  # unlimited: whole blocks
    limiter.set_task("t", 1000.0)
    assert pacer.piece() == 64 * 1024  # never below one socket read
    limiter.set_task("t", 20e6)
    assert 64 * 1024 < pacer.piece() < 1 << 20
    limiter.set_task("t", 1e10)
    assert pacer.piece() == 1 << 20


def test_a_file_closed_during_a_write_is_closed_by_the_write(tmp_path: Path) -> None:
    manifest = Manifest("p", "1", (FileEntry("a.bin", 8, 0o644, "e3" * 32, ()),), (), {})
    staging = Staging(tmp_path / "game", "0" * 32, manifest)
    staging.prepare([0])
    with staging._held(0, True) as fd:  # a worker thread's write in flight
        assert fd is not None
        staging.close_file(0)  # the file verified meanwhile: closed by the loop
        os.pwrite(fd, b"written!", 0)  # still this file's descriptor, not EBADF
        os.fstat(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # the write's end closed it
    staging.close()
    assert (staging.path(0)).read_bytes() == b"written!"
