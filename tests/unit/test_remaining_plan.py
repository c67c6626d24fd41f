"""A resumed task's plan is the full plan less the journal's blocks (``remaining_plan``): no
pass over the manifest, the same work as re-planning from scratch would find."""

from __future__ import annotations

from engine.core.planner import (
    BlockJob,
    ChunkTarget,
    ChunkWrite,
    FetchRange,
    InstallPlan,
    coalesce,
    remaining_plan,
)
from patcher.manifest import Codec


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
