"""A resumed task's plan is the full plan less the journal's blocks (``remaining_plan``): no
pass over the manifest, the same work as re-planning from scratch would find."""

from __future__ import annotations

import copy
import pickle
import random
import threading

from engine.core.planner import (
    BlockJob,
    ChunkTarget,
    ChunkWrite,
    FetchRange,
    InstallPlan,
    all_writes,
    coalesce,
    plan_install,
    remaining_plan,
)
from patcher.manifest import (
    Block,
    ChunkEntry,
    ChunkLocation,
    Codec,
    FileEntry,
    Manifest,
    decode_manifest,
    encode_manifest,
)


def block(index: int, offset: int, writes: list[tuple[int, int, int]]) -> BlockJob:
    """A block of 100 stored bytes whose chunks (size, file, file offset) go to files."""
    targets, at = [], 0
    for size, fi, fo in writes:
        targets.append(ChunkTarget(f"c{index}-{at}", at, size, (ChunkWrite(fi, fo),)))
        at += size
    return BlockJob(index, "pack", offset, 100, at, Codec.RAW, tuple(targets))


def plan_of(jobs: list[BlockJob], files: int) -> InstallPlan:
    ranges = coalesce(jobs, max_range=350, max_gap=0)
    pending = {fi: 0 for fi in range(files)}
    for j in jobs:
        for t in j.targets:
            for w in t.writes:
                pending[w.file_index] += 1
    return InstallPlan(tuple(ranges), pending, sum(r.size for r in ranges),
                       sum(j.stored_size for j in jobs),
                       sum(t.size for j in jobs for t in j.targets), 1000)


JOBS = [block(0, 0, [(60, 0, 0), (40, 0, 60)]), block(1, 100, [(100, 0, 100)]),
        block(2, 200, [(50, 1, 0), (50, 2, 0)]), block(3, 300, [(100, 1, 50)]),
        block(4, 400, [(100, 2, 50)])]


def test_nothing_done_is_the_full_plan_itself() -> None:
    full = plan_of(JOBS, 3)
    assert remaining_plan(full, []) is full


def test_done_blocks_are_left_out_and_their_writes_counted() -> None:
    full = plan_of(JOBS, 3)
    assert [[b.index for b in r.blocks] for r in full.ranges] == [[0, 1, 2], [3, 4]]
    rest = remaining_plan(full, {0, 1, 3})
    # the same as planning only the blocks still to fetch
    fresh = plan_of([JOBS[2], JOBS[4]], 3)
    assert [[b.index for b in r.blocks] for r in rest.ranges] == [[2], [4]]
    assert [(r.start, r.end) for r in rest.ranges] == [(200, 300), (400, 500)]
    assert rest.pending_writes == fresh.pending_writes == {0: 0, 1: 1, 2: 2}
    assert rest.useful_bytes == fresh.useful_bytes == 200
    assert rest.write_bytes == fresh.write_bytes == 200
    assert rest.download_bytes == 200
    assert remaining_plan(full, range(5)).ranges == ()


def test_a_finished_block_inside_a_range_is_read_as_a_gap() -> None:
    full = plan_of(JOBS, 3)
    rest = remaining_plan(full, {1})
    first = rest.ranges[0]
    assert isinstance(first, FetchRange)
    assert [b.index for b in first.blocks] == [0, 2] and (first.start, first.end) == (0, 300)
    assert rest.download_bytes == 300 + 200 and rest.useful_bytes == 400


def test_the_full_plan_from_the_manifest_arrays_equals_the_plan_of_every_write() -> None:
    """plan_install builds a whole game's plan from the decoded manifest's arrays with lazy
    targets (no object per chunk); it must be exactly the plan the per-chunk path builds, with
    chunks shared by two files, several chunks per block and blocks out of id order."""

    rnd = random.Random(13)
    ids = [rnd.randbytes(32).hex() for _ in range(40)]
    blocks = tuple(Block("ab" * 32, b * 1000, 1000, 1000, Codec.RAW) for b in range(6))
    locs = {cid: ChunkLocation(i % 6, 100 * (i // 6)) for i, cid in enumerate(ids)}
    files = []
    for fi in range(5):
        picked = rnd.sample(ids, 9) + ids[:2]  # ids[0] and ids[1] are in every file
        rows = tuple(ChunkEntry(100 * j, 100, cid) for j, cid in enumerate(dict.fromkeys(picked)))
        files.append(FileEntry(f"f{fi}", 100 * len(rows), 0o644, "e3" * 32, rows))
    used = {c.id for f in files for c in f.chunks}
    m = decode_manifest(encode_manifest(Manifest(
        "p", "1", tuple(files), blocks, {c: loc for c, loc in locs.items() if c in used})))
    for done in (set(), {1, 4}):
        lazy = plan_install(m, done_blocks=done, max_range=2500, max_gap=0)
        eager = plan_install(m, done_blocks=done, max_range=2500, max_gap=0, wanted=all_writes(m))
        assert (lazy.pending_writes, lazy.write_bytes, lazy.download_bytes, lazy.useful_bytes) == (
            eager.pending_writes, eager.write_bytes, eager.download_bytes, eager.useful_bytes)
        assert [(r.pack, r.start, r.end) for r in lazy.ranges] == [
            (r.pack, r.start, r.end) for r in eager.ranges]
        assert [j.materialized() for r in lazy.ranges for j in r.blocks] == [
            j for r in eager.ranges for j in r.blocks]
        assert all(j.index not in done for r in lazy.ranges for j in r.blocks)
        assert lazy.write_bytes == 100 * sum(len(f.chunks) for f in m.files) - sum(
            100 for f in m.files for c in f.chunks if m.chunks[c.id].block in done)


def test_a_fresh_plan_leaves_the_chunk_orders_to_the_block_workers() -> None:
    """A fresh install's plan builds neither the chunks' order within blocks nor their rows
    (its first ranges start without them); the block workers build them on first use, once
    however many ask at the same moment, and each block's spans are what a table built before
    any thread would give."""

    rnd = random.Random(27)
    ids = [rnd.randbytes(32).hex() for _ in range(3000)]
    blocks = tuple(Block("ab" * 32, b * 100_000, 100_000, 100_000, Codec.RAW) for b in range(30))
    files = tuple(FileEntry(f"f{k}", 100 * 1000, 0o644, "e3" * 32,
                            tuple(ChunkEntry(100 * j, 100, ids[1000 * k + j]) for j in range(1000)))
                  for k in range(3))
    m = Manifest("p", "1", files, blocks, {cid: ChunkLocation(i // 1000 * 10 + i % 10,
                                                               100 * (i % 1000 // 10))
                                           for i, cid in enumerate(ids)})
    blob = encode_manifest(m)
    reference = plan_install(decode_manifest(blob))
    expected = [job.spans() for r in reference.ranges for job in r.blocks]

    fresh = decode_manifest(blob)
    plan = plan_install(fresh)
    table = fresh.table()
    assert table._by_block is None and table._rows_of is None
    jobs = [job for r in plan.ranges for job in r.blocks]
    got: dict[int, object] = {}
    start = threading.Barrier(8)

    def work(k: int) -> None:
        start.wait()
        for i in range(k, len(jobs), 8):
            got[i] = jobs[i].spans()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(jobs))] == expected
    assert table._by_block is not None and table._rows_of is not None
    # a table pickles and copies without its lock; the copy's orders are the same
    for twin in (pickle.loads(pickle.dumps(table)), copy.deepcopy(table)):
        assert twin.by_block() == table.by_block() and twin.rows_of() == table.rows_of()
        assert twin.find(ids[5]) == table.find(ids[5])
