"""Install planning: a pure function from a manifest (and what is already done) to work.

The plan says which blocks to fetch, grouped into coalesced byte ranges of the pack files (a
fresh install reads packs almost sequentially; small gaps are fetched rather than paying for
another request), where each chunk of each block goes, and what it costs before anything starts.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from patcher.manifest import ChunkTable, Codec, Manifest


@dataclass(frozen=True, slots=True)
class ChunkWrite:
    file_index: int
    file_offset: int


@dataclass(frozen=True, slots=True)
class ChunkTarget:
    chunk_id: str
    offset: int  # in the block's uncompressed bytes
    size: int
    writes: tuple[ChunkWrite, ...]


class BlockTargets(Sequence[ChunkTarget]):
    """A block's chunk targets in a full plan, built from the manifest's ``ChunkTable`` when
    read: a plan holds no object per chunk (a 16 GiB game has ~260k), only one per block."""

    __slots__ = ("_hi", "_lo", "_table")

    def __init__(self, table: ChunkTable, lo: int, hi: int) -> None:
        self._table, self._lo, self._hi = table, lo, hi  # a slice of table.by_block()'s order

    def __len__(self) -> int:
        return self._hi - self._lo

    def _target(self, u: int) -> ChunkTarget:
        t = self._table
        start, rows = t.rows_of()
        return ChunkTarget(t.hex_id(u), t.block_offset[u], t.size[u], tuple(
            ChunkWrite(t.row_file[r], t.row_offset[r]) for r in rows[start[u] : start[u + 1]]))

    @overload
    def __getitem__(self, i: int) -> ChunkTarget: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[ChunkTarget]: ...
    def __getitem__(self, i: int | slice) -> ChunkTarget | Sequence[ChunkTarget]:
        if isinstance(i, slice):
            return tuple(self)[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("target index out of range")
        return self._target(self._table.by_block()[1][self._lo + i])

    def __iter__(self) -> Iterator[ChunkTarget]:
        order = self._table.by_block()[1]
        return map(self._target, order[self._lo : self._hi])

    def columns(self) -> TableColumns:
        """Where the block's chunks are in the table, for a native reader (engine/io/blockio.py):
        ids, block offsets, sizes, each chunk's rows (start, rows), the rows' files and file
        offsets, the by-block order, and the block's slice of that order."""
        t = self._table
        start, rows = t.rows_of()
        return (t.ids, t.block_offset, t.size, start, rows, t.row_file, t.row_offset,
                t.by_block()[1], self._lo, self._hi)

    def spans(self) -> list[ChunkSpan]:
        """The block's chunks straight from the arrays (no per-chunk dataclasses)."""
        t = self._table
        ids, off, size, row_file, row_offset = t.ids, t.block_offset, t.size, t.row_file, t.row_offset
        start, rows = t.rows_of()
        return [(bytes(ids[32 * u : 32 * u + 32]), off[u], size[u],
                 [(row_file[r], row_offset[r]) for r in rows[start[u] : start[u + 1]]])
                for u in t.by_block()[1][self._lo : self._hi]]


# (chunk id's 32 bytes, offset in the block's raw bytes, size, [(file index, file offset)])
ChunkSpan = tuple[bytes, int, int, list[tuple[int, int]]]
# BlockTargets.columns(): eight arrays of the chunk table and a slice of the last
TableColumns = tuple[bytes | bytearray, "array[int]", "array[int]", "array[int]", "array[int]",
                     "array[int]", "array[int]", "array[int]", int, int]


@dataclass(frozen=True, slots=True)
class BlockJob:
    index: int  # manifest block index: the journal's unit
    pack: str
    offset: int
    stored_size: int
    raw_size: int
    codec: Codec
    targets: Sequence[ChunkTarget]  # a tuple, or ``BlockTargets`` in a full plan

    def spans(self) -> list[ChunkSpan]:
        """What the block processor needs of each chunk, in the cheapest form."""
        if isinstance(self.targets, BlockTargets):
            return self.targets.spans()
        return [(bytes.fromhex(t.chunk_id), t.offset, t.size,
                 [(w.file_index, w.file_offset) for w in t.writes]) for t in self.targets]

    def materialized(self) -> BlockJob:
        """The job with its targets built once (for the steps that read them repeatedly)."""
        if isinstance(self.targets, tuple):
            return self
        return BlockJob(self.index, self.pack, self.offset, self.stored_size, self.raw_size,
                        self.codec, tuple(self.targets))


@dataclass(frozen=True, slots=True)
class FetchRange:
    pack: str
    start: int
    end: int  # exclusive
    blocks: tuple[BlockJob, ...]

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class InstallPlan:
    ranges: tuple[FetchRange, ...]
    pending_writes: dict[int, int]  # file index -> chunk writes still to do
    download_bytes: int  # bytes on the wire, gaps included
    useful_bytes: int  # stored bytes of the blocks needed
    write_bytes: int  # uncompressed bytes to write
    total_bytes: int  # size of the installed game
    pending_bytes: dict[int, int] = field(default_factory=dict)  # file index -> bytes to write


Wanted = dict[str, list[ChunkWrite]]  # chunk id -> where it must be written


def all_writes(manifest: Manifest, files: Iterable[int] | None = None) -> Wanted:
    """Every chunk write of the given files (all files by default)."""
    wanted: Wanted = defaultdict(list)
    indexes = range(len(manifest.files)) if files is None else files
    for fi in indexes:
        for c in manifest.files[fi].chunks:
            wanted[c.id].append(ChunkWrite(fi, c.offset))
    return dict(wanted)


def block_jobs(manifest: Manifest, done_blocks: Iterable[int] = (),
               wanted: Wanted | None = None) -> list[BlockJob]:
    """The blocks holding the wanted chunks, except those the journal says are written."""
    done = set(done_blocks)
    want = all_writes(manifest) if wanted is None else wanted
    table = manifest.table()
    targets: dict[int, list[tuple[int, str, list[ChunkWrite]]]] = defaultdict(list)
    for cid, writes in want.items():
        if not writes:
            continue
        u = table.find(cid)
        if u < 0:
            raise KeyError(cid)
        if table.block[u] not in done:
            targets[table.block[u]].append((u, cid, writes))
    jobs = []
    for bi in sorted(targets):
        b = manifest.blocks[bi]
        ordered = sorted(targets[bi], key=lambda t: table.block_offset[t[0]])
        chunk_targets = tuple(
            ChunkTarget(cid, table.block_offset[u], table.size[u], tuple(writes))
            for u, cid, writes in ordered
        )
        jobs.append(BlockJob(bi, b.pack, b.offset, b.stored_size, b.raw_size, b.codec,
                             chunk_targets))
    return jobs


def coalesce(jobs: Iterable[BlockJob], *, max_range: int, max_gap: int) -> list[FetchRange]:
    """Merge blocks of one pack into ranges of at most ``max_range`` bytes, bridging small gaps."""
    ordered = sorted(jobs, key=lambda j: (j.pack, j.offset))
    ranges: list[FetchRange] = []
    current: list[BlockJob] = []

    def flush() -> None:
        if current:
            ranges.append(FetchRange(current[0].pack, current[0].offset,
                                     current[-1].offset + current[-1].stored_size, tuple(current)))
            current.clear()

    for job in ordered:
        if current:
            last = current[-1]
            end = last.offset + last.stored_size
            gap = job.offset - end
            fits = job.offset + job.stored_size - current[0].offset <= max_range
            if job.pack != last.pack or gap > max_gap or gap < 0 or not fits:
                flush()
        current.append(job)
    flush()
    return ranges


def full_block_jobs(manifest: Manifest, done_blocks: Iterable[int] = ()
                    ) -> tuple[list[BlockJob], dict[int, int], dict[int, int]]:
    """Every block holding chunks of the game, but the journal's: (jobs, chunk writes per
    file, bytes per file), from the manifest's arrays; targets stay lazy (``BlockTargets``)."""
    table = manifest.table()
    done = set(done_blocks)
    # the chunks' order within blocks and their rows are read by the blocks' processing
    # (``BlockTargets.spans``), built there on first use: a fresh install's first ranges start
    # ~7 ms sooner at the 1 GiB demo, the first blocks' workers building them as bytes arrive
    start = table.block_start()
    pending: dict[int, int] = {fi: 0 for fi in range(len(manifest.files))}
    pending_bytes = dict(pending)
    row_file, size = table.row_file, table.size
    jobs: list[BlockJob] = []
    if not done:
        # a fresh install writes every row: a file's rows are one slice of the row arrays, the
        # files' slices in file order (row_file never decreases), so each file's count and
        # bytes come from its slice's bounds and one sum in C (the loop below cost ~0.3 s of a
        # 16 GiB game's 0.7 s plan; a tuple per row through groupby, 2-3 ms of 1 GiB's)
        sizes = list(map(size.__getitem__, table.row_chunk))
        bounds = [bisect_left(row_file, fi) for fi in range(len(manifest.files) + 1)]
        for fi in range(len(manifest.files)):
            lo, hi = bounds[fi], bounds[fi + 1]
            pending[fi] = hi - lo
            pending_bytes[fi] = sum(sizes[lo:hi])
    for bi in range(len(start) - 1):
        lo, hi = start[bi], start[bi + 1]
        if lo == hi or bi in done:
            continue
        if done:
            order = table.by_block()[1]
            rstart, rows = table.rows_of()
            for u in order[lo:hi]:
                for r in rows[rstart[u] : rstart[u + 1]]:
                    pending[row_file[r]] += 1
                    pending_bytes[row_file[r]] += size[u]
        blk = manifest.blocks[bi]
        jobs.append(BlockJob(bi, blk.pack, blk.offset, blk.stored_size, blk.raw_size, blk.codec,
                             BlockTargets(table, lo, hi)))
    return jobs, pending, pending_bytes


def plan_install(
    manifest: Manifest, *, done_blocks: Iterable[int] = (), max_range: int = 16 << 20,
    max_gap: int = 256 << 10, wanted: Wanted | None = None,
) -> InstallPlan:
    if wanted is None:  # the whole game: from the arrays, no per-chunk objects
        jobs, pending, pending_bytes = full_block_jobs(manifest, done_blocks)
        ranges = coalesce(jobs, max_range=max_range, max_gap=max_gap)
        return InstallPlan(
            ranges=tuple(ranges), pending_writes=pending,
            download_bytes=sum(r.size for r in ranges),
            useful_bytes=sum(j.stored_size for j in jobs),
            write_bytes=sum(pending_bytes.values()), total_bytes=manifest.total_size,
            pending_bytes=pending_bytes,
        )
    jobs = block_jobs(manifest, done_blocks, wanted)
    ranges = coalesce(jobs, max_range=max_range, max_gap=max_gap)
    pending = {fi: 0 for fi in range(len(manifest.files))}
    pending_bytes = dict(pending)
    write = 0
    for job in jobs:
        for t in job.targets:
            for w in t.writes:
                pending[w.file_index] += 1
                pending_bytes[w.file_index] += t.size
                write += t.size
    return InstallPlan(
        ranges=tuple(ranges),
        pending_writes=pending,
        download_bytes=sum(r.size for r in ranges),
        useful_bytes=sum(j.stored_size for j in jobs),
        write_bytes=write,
        total_bytes=manifest.total_size,
        pending_bytes=pending_bytes,
    )


def split_range(r: FetchRange, done: Iterable[int]) -> FetchRange | None:
    """The part of a range still to fetch after some of its blocks arrived (for retries)."""
    finished = set(done)
    rest = tuple(b for b in r.blocks if b.index not in finished)
    if not rest:
        return None
    return FetchRange(r.pack, rest[0].offset, rest[-1].offset + rest[-1].stored_size, rest)


def remaining_plan(full: InstallPlan, done_blocks: Iterable[int]) -> InstallPlan:
    """``full`` without the blocks the journal says are written: what a resumed run fetches.
    Derived from the plan already built (no pass over the manifest's chunks), so pausing and
    resuming a running task costs no re-plan. A range loses its finished blocks; one with
    finished blocks in its middle still reads (and drops) their bytes, as a bridged gap."""
    done = set(done_blocks)
    if not done:
        return full
    pending = dict(full.pending_writes)
    pending_bytes = dict(full.pending_bytes)
    ranges: list[FetchRange] = []
    useful = write = 0
    for r in full.ranges:
        for job in r.blocks:
            if job.index in done:
                for t in job.targets:
                    for w in t.writes:
                        pending[w.file_index] -= 1
                        if w.file_index in pending_bytes:
                            pending_bytes[w.file_index] -= t.size
            else:
                useful += job.stored_size
                write += sum(t.size * len(t.writes) for t in job.targets)
        rest = split_range(r, done)
        if rest is not None:
            ranges.append(rest)
    return InstallPlan(
        ranges=tuple(ranges), pending_writes=pending,
        download_bytes=sum(r.size for r in ranges), useful_bytes=useful, write_bytes=write,
        total_bytes=full.total_bytes, pending_bytes=pending_bytes,
    )
