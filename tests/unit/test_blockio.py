"""Block writes: a block's chunks go to their files as runs of consecutive pieces (one
pwritev each), byte-exact, whatever the layout (two files, a gap, a chunk written twice)."""

from __future__ import annotations

import os
from pathlib import Path

from engine.core.planner import BlockJob, ChunkTarget, ChunkWrite
from engine.io.blockio import coalesce_writes
from engine.io.fsops import pwritev_all
from patcher.manifest import Codec


def job(targets: list[ChunkTarget]) -> BlockJob:
    size = sum(t.size for t in targets)
    return BlockJob(0, "p", 0, size, size, Codec.RAW, tuple(targets))


def test_consecutive_chunks_become_one_run_per_file() -> None:
    data = memoryview(bytes(range(100)))
    j = job([ChunkTarget("a", 0, 10, (ChunkWrite(0, 0),)),
             ChunkTarget("b", 10, 20, (ChunkWrite(0, 10), ChunkWrite(1, 500))),
             ChunkTarget("c", 30, 30, (ChunkWrite(0, 30),)),
             ChunkTarget("d", 60, 40, (ChunkWrite(0, 1000),))])  # a gap: a new run
    runs = coalesce_writes(j, data)
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
