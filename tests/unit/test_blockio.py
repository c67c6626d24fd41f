"""Block writes: a block's chunks go to their files as runs of consecutive pieces (one
pwritev each), byte-exact, whatever the layout (two files, a gap, a chunk written twice)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.core.planner import BlockJob, ChunkTarget, ChunkWrite
from engine.io.blockio import coalesce_spans
from engine.io.fsops import pwritev_all
from engine.io.journal import JOURNAL_FLUSH_SECONDS, Journal
from engine.io.staging import Staging
from engine.io.state import State
from patcher.manifest import Codec, FileEntry, Manifest

Journaled = tuple[State, str, Journal]  # the state, a task's id, the task's journal


@pytest.fixture
def journaled(tmp_path: Path) -> Iterator[Journaled]:
    """A task's journal over a real state database and one staged 10-byte file."""
    state = State(tmp_path / "data")
    task = state.add_task("p", "1", str(tmp_path / "game"))
    manifest = Manifest("p", "1", (FileEntry("a.bin", 10, 0o644, "e3" * 32, ()),), (), {})
    staging = Staging(tmp_path / "game", task.id, manifest)
    staging.prepare([0])
    try:
        yield state, task.id, Journal(state, staging, task.id)
    finally:
        staging.close()
        state.close()


def job(targets: list[ChunkTarget]) -> BlockJob:
    size = sum(t.size for t in targets)
    return BlockJob(0, "p", 0, size, size, Codec.RAW, tuple(targets))


def test_consecutive_chunks_become_one_run_per_file() -> None:
    data = memoryview(bytes(range(100)))
    j = job([ChunkTarget("aa" * 32, 0, 10, (ChunkWrite(0, 0),)),
             ChunkTarget("bb" * 32, 10, 20, (ChunkWrite(0, 10), ChunkWrite(1, 500))),
             ChunkTarget("cc" * 32, 30, 30, (ChunkWrite(0, 30),)),
             ChunkTarget("dd" * 32, 60, 40, (ChunkWrite(0, 1000),))])  # a gap: a new run
    runs = coalesce_spans(j.spans(), data)
    assert [(f, o, [len(p) for p in ps]) for f, o, ps in runs] == [
        (0, 0, [10, 20, 30]), (1, 500, [20]), (0, 1000, [40])]


def test_pwritev_all_writes_every_piece_in_order(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        pieces = [memoryview(bytes([i]) * (i * 1000 + 1)) for i in range(1, 40)]
        pieces.insert(3, memoryview(b""))  # an empty piece is fine
        pwritev_all(fd, pieces, 7)
    finally:
        os.close(fd)
    content = path.read_bytes()
    assert content[:7] == b"\0" * 7
    assert content[7:] == b"".join(bytes(p) for p in pieces)


def test_a_background_journal_flush_taken_over_records_once(journaled: Journaled) -> None:
    """The journal syncs and records a batch beside the download; a synchronous flush (the end
    of a run, a file that failed its hash) takes over a batch still in flight: recorded by it,
    and not recorded again by the background flush when it wakes (after a forget_blocks)."""
    state, task_id, journal = journaled
    journal.staging.pwritev(0, [memoryview(b"0123456789")], 0)

    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            journal.add(7, [0], 100)
            background = asyncio.create_task(journal.flush_async(pool))
            await asyncio.sleep(0)  # it took the batch and waits for the fdatasync
            assert journal.flushing and state.done_blocks(task_id) == set()
            journal.add(8, [0], 100)
            journal.flush()  # takes over block 7 and records it with block 8
            assert not journal.flushing and state.done_blocks(task_id) == {7, 8}
            state.forget_blocks(task_id, {7}, set())
            await background
            assert state.done_blocks(task_id) == {8}  # not recorded again behind the forget
            journal.add(9, [0], 100)
            await journal.flush_async(pool)  # alone, it records its own batch
            assert state.done_blocks(task_id) == {8, 9} and not journal.flushing

    asyncio.run(run())


def test_background_flushes_scheduled_back_to_back_lose_no_block(journaled: Journaled) -> None:
    """Blocks land faster than a flush task starts: several flushes are scheduled before the
    first runs. Each block must end up journaled (a later flush with nothing to take once
    replaced the in-flight batch, which was then never recorded: a kill during the commit found
    blocks missing and wrote into files already moved)."""
    state, task_id, journal = journaled

    async def run() -> None:
        with ThreadPoolExecutor(2) as pool:
            flushes = []
            for block in range(40):
                journal.add(block, [0], 1 << 30)  # every block asks for a flush
                if not journal.flushing:
                    flushes.append(asyncio.create_task(journal.flush_async(pool)))
                if block % 7 == 0:
                    await asyncio.sleep(0)
            assert len(flushes) > 1
            await asyncio.gather(*flushes)
            journal.flush()
            assert state.done_blocks(task_id) == set(range(40))

    asyncio.run(run())


def test_a_burst_of_records_keeps_every_block_journaled(journaled: Journaled) -> None:
    """The threaded download drains its landed blocks without yielding, so ``record`` runs
    back to back while the loop is late (each call asks for a flush): every block must still
    reach the journal (from the session 21 review)."""
    state, task_id, journal = journaled
    journal.staging.pwritev(0, [memoryview(b"0123456789")], 0)
    journal.last_flush -= 2 * JOURNAL_FLUSH_SECONDS  # the loop was late: items queued up

    async def run() -> None:
        with ThreadPoolExecutor(2) as pool:
            tasks = []
            for block in range(5):  # build.py's record(), called back to back by the drain loop
                if journal.add(block, [0], 100) and not journal.flushing:
                    tasks.append(asyncio.create_task(journal.flush_async(pool)))
            await asyncio.gather(*tasks)
            journal.flush()  # the end of the run

    asyncio.run(run())
    assert state.done_blocks(task_id) == {0, 1, 2, 3, 4}
