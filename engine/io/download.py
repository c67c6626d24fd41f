"""The network shell: fetch coalesced byte ranges of packs from ranked CDN sources, hand each
block to a processor, retry what failed elsewhere.

Two ways to read a range, one set of rules: ranges run on worker threads
(``engine.io.rangeclient``: blocking sockets, a reused buffer, the block processed on the
thread that read it; under a speed limit the thread paces each piece with the limiter,
so the event loop never touches the bytes, limited or not); responses that client does not
handle go through aiohttp on the event loop, where the limiter paces each 64 KiB read.

Failures are classified (5xx, reset, stall, 403, corrupt bytes) and fed to the source pool,
which ranks edges by health and speed; a retried range skips the blocks that already arrived.
Every retry is capped; the last failure decides the final error code.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from engine.core.errors import EngineError, ErrorCode
from engine.core.fetchrules import FetchState, GiveUp, after_failure
from engine.core.httpwire import Unsupported
from engine.core.planner import BlockJob, FetchRange, split_range
from engine.core.retry import RetryPolicy, StallDetector
from engine.core.sources import CdnSource, FailureKind, SourcePool
from engine.io.blockio import BlockCorrupt
from engine.io.limiter import AsyncRateLimiter
from engine.io.rangeclient import (
    MIN_RATE_BPS,
    POLL_S,
    FetchFailed,
    RangeFetch,
    Stopped,
    fetch_range,
    worker_pool,
)
from engine.io.threads import run_to_end, thread_ended

if TYPE_CHECKING:  # aiohttp is imported where the general client first runs (issue 13: its
    import aiohttp  # import, ~0.1-0.4 s, was in front of every install's first byte)

log = logging.getLogger(__name__)

__all__ = ["BlockSink", "DownloadContext", "FetchFailed", "download", "pack_rel"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BlockSink(Generic[R]):
    """What happens to a fetched block: ``process`` (decode, verify, write) on a worker thread
    — it must not keep ``data``, a reused buffer — and ``record`` (journal, progress) of its
    result on the event loop thread, in the order the blocks were processed per range."""
    process: Callable[[BlockJob, bytes | memoryview], R]
    record: Callable[[BlockJob, R], None]


SourceRefresher = Callable[[], Awaitable[tuple[CdnSource, ...]]]
# a failed range is about to be fetched again: (its state, the source picked now, the range)
RetryHook = Callable[[FetchState, str, FetchRange], None]


@dataclass(frozen=True, slots=True)
class WorkItem:
    range: FetchRange
    state: FetchState = field(default_factory=FetchState)


@dataclass(slots=True)
class DownloadContext:
    # the general client's session, made (and aiohttp imported) only when a range needs it
    session_factory: Callable[[], aiohttp.ClientSession]
    pool: SourcePool
    limiter: AsyncRateLimiter
    retry: RetryPolicy
    product_id: str
    task_key: str
    refresh: SourceRefresher
    refresh_margin_s: float = 60.0
    stall_window_s: float = 15.0  # settings.stall_timeout_s
    on_bytes: Callable[[int], None] = lambda n: None
    on_retry: RetryHook = lambda state, source_id, r: None
    executor: ThreadPoolExecutor | None = None  # processes blocks read on the event loop
    connect_timeout_s: float = 10.0
    # sources whose answers the threaded client could not take: the general client serves them
    general_only: set[str] = field(default_factory=set)
    _refresh_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    first_byte_at: float | None = None  # CLOCK_MONOTONIC of the run's first pack byte

    def saw_bytes(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
            # logged with the system-wide monotonic clock, so a bench that spawned the engine
            # can tell the command's time to first byte (bench/download.py first_byte_s), with
            # the process's CPU so far (steadier than wall time on a shared host)
            log.info("first pack byte at monotonic %.6f after %.4f process CPU-s",
                     self.first_byte_at, time.process_time())

    async def refresh_tokens(self, force: bool = False) -> None:
        async with self._refresh_lock:
            if force or self.pool.needs_refresh(time.time(), self.refresh_margin_s):
                self.pool.replace_tokens(list(await self.refresh()))


def checked_process(sink: BlockSink[R], source: CdnSource
                    ) -> Callable[[BlockJob, bytes | memoryview], R]:
    """The sink's ``process`` with bytes that fail their checks counted against ``source``
    (both clients: another source is tried)."""
    def process(job: BlockJob, data: bytes | memoryview) -> R:
        try:
            return sink.process(job, data)
        except BlockCorrupt as exc:
            raise FetchFailed(FailureKind.CORRUPT, f"{source.id}: {exc}") from exc
    return process


def pack_rel(product_id: str, pack: str) -> str:
    return f"{product_id}/packs/{pack}.pack"


async def _fetch_range(ctx: DownloadContext, source: CdnSource, r: FetchRange,
                       sink: BlockSink[R], done: set[int]) -> None:
    """The general client (aiohttp on the loop): what the threaded one cannot take."""
    import aiohttp

    process = checked_process(sink, source)
    url = source.url(pack_rel(ctx.product_id, r.pack))
    headers = {"Range": f"bytes={r.start}-{r.end - 1}"}
    started = time.monotonic()
    received = 0
    # unlimited reads slower than this over a whole stall window fail over (MIN_RATE_BPS)
    watch = StallDetector(ctx.stall_window_s, max(1, int(MIN_RATE_BPS * ctx.stall_window_s)),
                          now=started)
    try:
        async with ctx.session_factory().get(url, headers=headers) as resp:
            if resp.status == 403:
                raise FetchFailed(FailureKind.FORBIDDEN, f"{source.id}: 403 for {r.pack[:12]}")
            if resp.status >= 500:
                raise FetchFailed(FailureKind.HTTP_5XX, f"{source.id}: HTTP {resp.status}")
            if resp.status == 416:
                raise FetchFailed(FailureKind.CORRUPT, f"{source.id}: HTTP 416 for bytes "
                                  f"{r.start}-{r.end - 1} of pack {r.pack[:12]}", out_of_range=True)
            if resp.status == 200 and r.start != 0:
                raise FetchFailed(FailureKind.HTTP_5XX, f"{source.id}: ignored Range")
            if resp.status not in (200, 206):
                raise FetchFailed(FailureKind.HTTP_5XX, f"{source.id}: HTTP {resp.status}")
            position = r.start
            if ctx.first_byte_at is None:
                ctx.saw_bytes()  # headers in: the body's first bytes are here or in flight
            for job in r.blocks:
                if job.offset > position:  # a bridged gap: read and drop
                    await _read_block(ctx, resp.content, job.offset - position, watch)
                    received += job.offset - position
                data = await _read_block(ctx, resp.content, job.stored_size, watch)
                received += job.stored_size
                position = job.offset + job.stored_size
                result = await run_to_end(ctx.executor, process, job, data)
                done.add(job.index)
                sink.record(job, result)
    except asyncio.IncompleteReadError as exc:
        raise FetchFailed(FailureKind.RESET, f"{source.id}: connection closed early") from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise FetchFailed(FailureKind.STALL, f"{source.id}: no data (stalled)") from exc
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError, ConnectionError) as exc:
        raise FetchFailed(FailureKind.RESET, f"{source.id}: {exc!r}") from exc
    except aiohttp.ClientError as exc:
        raise FetchFailed(FailureKind.RESET, f"{source.id}: {exc!r}") from exc
    finally:
        if received:
            ctx.pool.record_success(source.id, received, time.monotonic() - started, time.time())


LIMITED_PIECE = 64 * 1024


async def _read_block(ctx: DownloadContext, stream: aiohttp.StreamReader, size: int,
                      watch: StallDetector) -> bytes:
    """Read one block. Under a speed limit, tokens are taken before each 64 KiB piece is read,
    so the socket itself is throttled (TCP backpressure) and the rate is smooth. Unlimited, the
    block is read as it arrives and every piece is shown to the stall detector: an edge that
    trickles (a byte now and then keeps a read timeout quiet) is left for another."""
    if not ctx.limiter.limited(ctx.task_key):
        parts: list[bytes] = []
        left = size
        while left:
            piece = await stream.read(left)
            if not piece:
                raise asyncio.IncompleteReadError(b"".join(parts), size)
            parts.append(piece)
            left -= len(piece)
            now = time.monotonic()
            watch.observe(len(piece), now)
            if watch.stalled(now):
                raise FetchFailed(FailureKind.STALL, f"under {watch.min_bytes} bytes in "
                                  f"{watch.window_s:.0f} s (trickling)")
        ctx.on_bytes(size)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    parts = []
    left = size
    while left:
        piece_size = min(LIMITED_PIECE, left)
        await ctx.limiter.consume(piece_size, ctx.task_key)
        parts.append(await stream.readexactly(piece_size))
        ctx.on_bytes(piece_size)
        left -= piece_size
    return b"".join(parts)


DELIVER_EVERY_S = 0.025  # a range thread wakes the loop for its processed blocks at most this often
PACED_PIECE_S = 0.02
PACED_PIECE_MIN = 64 * 1024
PACED_PIECE_MAX = 1 << 20


@dataclass(frozen=True, slots=True)
class TaskPacer:
    """The limiter as one task's worker thread sees it (``rangeclient.Pacer``)."""
    limiter: AsyncRateLimiter
    task_key: str
    stop: threading.Event

    def piece(self) -> int:
        """~20 ms of the limit's traffic per piece (64 KiB to 1 MiB): a thread per connection
        sleeping for each 64 KiB at 100 MB/s woke 1500 times a second for nothing."""
        rate = self.limiter.rate_for(self.task_key)
        if rate is None:
            return 0
        return max(PACED_PIECE_MIN, min(PACED_PIECE_MAX, int(rate * PACED_PIECE_S)))

    def pace(self, n: int) -> bool:
        return self.limiter.pace(n, self.task_key, self.stop, POLL_S)


async def _fetch_range_threaded(ctx: DownloadContext, source: CdnSource, r: FetchRange,
                                sink: BlockSink[R], done: set[int]) -> None:
    """The range on a worker thread (``engine.io.rangeclient``). Each processed block comes
    back through a queue and is recorded by this task, so a cancelled task records nothing
    more (as a cancelled await would). Cancelled, it asks the thread to stop and waits for it:
    nothing may still write into a staging area the run is closing."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    task_key = ctx.task_key
    # batches of processed blocks (≤ the range's blocks in all)
    landed: asyncio.Queue[list[tuple[BlockJob, R, int]] | None] = asyncio.Queue()
    batch: list[tuple[BlockJob, R, int]] = []  # the thread's alone until handed over
    handed_at = 0.0

    def hand_over() -> None:
        nonlocal batch
        if batch:
            loop.call_soon_threadsafe(landed.put_nowait, batch)
            batch = []

    def deliver(job: BlockJob, result: R, nbytes: int) -> None:
        # a block's result reaches the loop at once when the last went DELIVER_EVERY_S ago
        # (a slow link's every block), else with the next one past that, when a receive has
        # waited POLL_S for nothing (``on_idle``: a stalling edge), or at the range's end:
        # at ~1,000 blocks a second, waking the loop for each cost a loop pass and a GIL
        # hand-over per block
        nonlocal handed_at
        batch.append((job, result, nbytes))
        now = time.monotonic()
        if now - handed_at >= DELIVER_EVERY_S:
            handed_at = now
            hand_over()

    def run() -> None:
        try:
            fetch_range(fetch)
        finally:
            hand_over()  # what it processed, stopped or failed too: the journal keeps it

    def piece_read(nbytes: int) -> None:  # paced reads: progress between blocks
        loop.call_soon_threadsafe(ctx.on_bytes, nbytes)

    fetch = RangeFetch(source.url(pack_rel(ctx.product_id, r.pack)), r, source.id,
                       ctx.stall_window_s, ctx.connect_timeout_s, checked_process(sink, source), deliver,
                       give_back=lambda: False, stop=stop, on_first_byte=ctx.saw_bytes,
                       pacer=TaskPacer(ctx.limiter, task_key, stop),
                       on_piece=piece_read, on_idle=hand_over)
    work = worker_pool().submit(run)
    future = asyncio.wrap_future(work)
    # done callbacks run after everything the thread scheduled before it returned
    future.add_done_callback(lambda _: landed.put_nowait(None))
    try:
        try:
            while (items := await landed.get()) is not None:
                for job, result, nbytes in items:
                    ctx.on_bytes(nbytes)
                    sink.record(job, result)
                    done.add(job.index)
        except BaseException:  # cancelled, or recording a block failed: the thread stops too
            stop.set()
            ctx.limiter.wake_paced()  # a thread waiting for tokens sees the stop now
            work.cancel()  # not started yet: it never will
            await thread_ended(future)  # it sees the flag within POLL_S or one block
            # retrieved here (the thread's Stopped is what the stop asked for): an unretrieved
            # exception would be logged as an error when the future is collected
            if not future.cancelled() and future.exception() is not None:
                log.debug("range ended while stopped: %r", future.exception())
            raise
        future.result()
    finally:
        if fetch.received:
            ctx.pool.record_success(source.id, fetch.received,
                                    time.monotonic() - fetch.started, time.time())


async def download(ctx: DownloadContext, ranges: list[FetchRange], sink: BlockSink[R],
                   workers: int) -> None:
    """Fetch every range; raises the first unrecoverable error (cancelling the rest)."""
    queue: asyncio.Queue[WorkItem | None] = asyncio.Queue()
    for r in ranges:
        queue.put_nowait(WorkItem(r))
    outstanding = len(ranges)
    finished = asyncio.Event()
    if outstanding == 0:
        return

    async def worker() -> None:
        nonlocal outstanding
        while True:
            item = await queue.get()
            if item is None:
                return
            done: set[int] = set()
            await ctx.refresh_tokens()
            source = ctx.pool.pick(time.time(), item.state.exclude)
            if item.state.last is not None:
                ctx.on_retry(item.state, source.id, item.range)
            try:
                if source.id in ctx.general_only:
                    await _fetch_range(ctx, source, item.range, sink, done)
                else:
                    await _fetch_range_threaded(ctx, source, item.range, sink, done)
            except (Unsupported, Stopped) as exc:
                # not a failure of the source: the range (or its rest) goes round again, the
                # general client taking it when the threaded one cannot
                if isinstance(exc, Unsupported):
                    log.info("%s: %s; using the general HTTP client", source.id, exc)
                    ctx.general_only.add(source.id)
                rest = split_range(item.range, done)
                if rest is not None:
                    queue.put_nowait(WorkItem(rest, item.state))
                    continue
            except FetchFailed as exc:
                ctx.pool.record_failure(source.id, exc.kind, time.time())
                rest = split_range(item.range, done)
                if rest is not None:
                    what = f"pack {rest.pack[:12]} bytes {rest.start}-{rest.end - 1}"
                    step = after_failure(item.state, exc.failure(source.id, rest.pack),
                                         frozenset(s.id for s in ctx.pool.sources), ctx.retry,
                                         random.random(), what)
                    if isinstance(step, GiveUp):
                        raise EngineError(step.code, step.message, item=step.item) from exc
                    log.warning("range retry %d: %s", step.state.attempt, exc.detail)
                    if step.refresh_tokens:
                        await ctx.refresh_tokens(force=True)
                    await asyncio.sleep(step.delay_s)
                    queue.put_nowait(WorkItem(rest, step.state))
                    continue
            outstanding -= 1
            if outstanding == 0:
                finished.set()
                for _ in range(workers):
                    queue.put_nowait(None)

    async with asyncio.TaskGroup() as tg:
        for _ in range(max(1, min(workers, len(ranges)))):
            tg.create_task(worker())
    if not finished.is_set():
        raise EngineError(ErrorCode.CDN_UNREACHABLE, "download ended with ranges outstanding")
