"""Block processing, run in worker threads (zstd, BLAKE3 and pwrite release the GIL):
decompress a fetched block, verify every chunk's BLAKE3, write chunks at their file offsets.
A chunk that fails its hash is never written; nor is any chunk of its block.

Where scripts/build_native.sh built engine/io/_blockproc, a block is all of that in one native
call (the GIL released once); elsewhere, and for blocks it does not decode, the same in Python.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import blake3
import zstandard

from engine.core.planner import BlockJob, BlockTargets, ChunkSpan
from engine.io.fsops import translate_os_error
from engine.io.staging import Staging
from patcher.manifest import Codec


class BlockCorrupt(Exception):
    """The bytes received for a block do not decode or do not match their chunk ids."""

    def __init__(self, block: int, reason: str) -> None:
        super().__init__(f"block {block}: {reason}")
        self.block = block
        self.reason = reason


_local = threading.local()

# (block bytes, its chunks' (offset, size) as uint64 pairs) -> their 32-byte digests, joined
HashSpans = Callable[[bytes | bytearray | memoryview, "array[int]"], bytes]


def _native_hash_spans() -> HashSpans | None:
    """The block's chunks hashed in one call, the GIL released once (scripts/build_native.sh
    builds it): hashed one call per chunk, a worker waited for the GIL sixteen times a block,
    and six workers kept ~1.3 of two cores busy. None where it is not built."""
    try:
        from engine.io._blake3batch import hash_spans
    except ImportError:
        return None
    return hash_spans


_hash_spans = _native_hash_spans()

# (stored bytes, zstd?, raw size, spans as uint64 (offset, size) pairs, the chunk ids joined,
# writes as int64 (fd, direct fd or -1, file offset, span index) quads) -> -1 when written, or
# the index of the first chunk whose hash differs (nothing written); ValueError: the block
# does not decode
ProcessBlock = Callable[[bytes | memoryview, bool, int, "bytes | array[int]", bytes,
                         "bytes | array[int]"], int]


# BlockTargets.columns() -> (spans, ids, writes as int64 (file index, file offset, span)
# triples, {file index: (chunk writes, bytes)})
GatherInputs = Callable[..., tuple[bytes, bytes, bytes, dict[int, tuple[int, int]]]]
# (gather's triples, {file index: (fd, direct fd)}) -> ProcessBlock's quads
BindFds = Callable[[bytes, dict[int, tuple[int, int]]], bytes]


def _native_process() -> tuple[ProcessBlock, GatherInputs, BindFds] | None:
    """The whole block in one call, the GIL released once (engine/io/_blockproc.c): in Python
    a worker took the GIL back after the zstd call, the hashing and each pwritev. Its inputs
    are read from the manifest's chunk table natively too. None where it is not built (no
    libzstd-dev)."""
    try:
        from engine.io._blockproc import bind, gather, process
    except ImportError:
        return None
    return process, gather, bind


_natives = _native_process()
_process: ProcessBlock | None = None if _natives is None else _natives[0]


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per worker thread: a new one per block allocated a fresh context."""
    d: zstandard.ZstdDecompressor | None = getattr(_local, "zstd", None)
    if d is None:
        d = _local.zstd = zstandard.ZstdDecompressor()
    return d


def decode_block(job: BlockJob, stored: bytes | memoryview) -> bytes | memoryview:
    if len(stored) != job.stored_size:
        raise BlockCorrupt(job.index, f"{len(stored)} bytes, expected {job.stored_size}")
    if job.codec is Codec.RAW:
        return stored
    try:
        raw = _decompressor().decompress(stored, max_output_size=job.raw_size)
    except zstandard.ZstdError as exc:
        raise BlockCorrupt(job.index, f"zstd: {exc}") from exc
    if len(raw) != job.raw_size:
        raise BlockCorrupt(job.index, f"decoded {len(raw)} bytes, expected {job.raw_size}")
    return raw


def check_chunks(block: int, view: memoryview, spans: list[ChunkSpan],
                 hash_spans: HashSpans | None = _hash_spans) -> None:
    """Every chunk's BLAKE3 against its id, or BlockCorrupt naming the first that differs."""
    if hash_spans is not None:
        digests = hash_spans(view, array("Q", [n for _, offset, size, _ in spans
                                               for n in (offset, size)]))
        if digests == b"".join([cid for cid, _, _, _ in spans]):
            return
        bad = next(cid for i, (cid, _, _, _) in enumerate(spans)
                   if digests[32 * i : 32 * i + 32] != cid)
        raise BlockCorrupt(block, f"chunk {bad.hex()[:12]} hash mismatch")
    for cid, offset, size, _ in spans:
        if blake3.blake3(view[offset : offset + size]).digest() != cid:
            raise BlockCorrupt(block, f"chunk {cid.hex()[:12]} hash mismatch")


@dataclass(frozen=True, slots=True)
class BlockWritten:
    """A processed block, summed per file for the loop's bookkeeping (a few entries, not one
    per chunk): file index -> (chunk writes, bytes written)."""
    per_file: dict[int, tuple[int, int]]

    @property
    def written(self) -> int:
        return sum(n for _, n in self.per_file.values())


def process_block(job: BlockJob, stored: bytes | memoryview, staging: Staging,
                  native: ProcessBlock | None = _process) -> BlockWritten:
    """Verify and write one block: every chunk's BLAKE3 is checked before any is written.
    ``stored`` must not change until this returns: a read-only buffer is hashed and written
    in place, not copied first (engine/io/_blockproc.pyi)."""
    if native is not None and job.codec in (Codec.RAW, Codec.ZSTD):
        return _process_natively(job, stored, staging, native)
    view = memoryview(decode_block(job, stored))
    spans = job.spans()
    check_chunks(job.index, view, spans)
    per_file: dict[int, tuple[int, int]] = {}
    try:
        for file_index, offset, pieces in coalesce_spans(spans, view):
            staging.pwritev(file_index, pieces, offset)
            writes, nbytes = per_file.get(file_index, (0, 0))
            per_file[file_index] = (writes + len(pieces), nbytes + sum(len(p) for p in pieces))
    except OSError as exc:
        raise translate_os_error(exc, "writing staged files") from exc
    return BlockWritten(per_file)


def _process_natively(job: BlockJob, stored: bytes | memoryview, staging: Staging,
                      native: ProcessBlock) -> BlockWritten:
    """``process_block`` in one native call: the same checks, errors and writes."""
    if len(stored) != job.stored_size:
        raise BlockCorrupt(job.index, f"{len(stored)} bytes, expected {job.stored_size}")
    spans, ids, writes, per_file = native_inputs(job)
    try:
        # the files are opened (and created, when staged lazily) before the hashes are
        # checked: a corrupt block may create a staged file, it writes no byte into one
        with staging.held(per_file) as fds:
            bad = native(stored, job.codec is Codec.ZSTD, job.raw_size, spans, ids,
                         _bind(writes, fds))
    except ValueError as exc:
        raise BlockCorrupt(job.index, str(exc)) from exc
    except OSError as exc:
        raise translate_os_error(exc, "writing staged files") from exc
    if bad >= 0:
        raise BlockCorrupt(job.index, f"chunk {ids[32 * bad : 32 * bad + 6].hex()} hash mismatch")
    return BlockWritten(per_file)


def native_inputs(job: BlockJob) -> tuple[bytes, bytes, bytes, dict[int, tuple[int, int]]]:
    """What the native processor takes of a block's chunks: (spans, ids, writes as (file
    index, file offset, span) triples, per file (chunk writes, bytes)). A full plan's block
    is read from the chunk table natively (``gather``); a block built of targets (an update's,
    a repair's) from its spans."""
    if _natives is not None and isinstance(job.targets, BlockTargets):
        return _natives[1](*job.targets.columns())
    spans = job.spans()
    per_file: dict[int, tuple[int, int]] = {}
    for _, _, size, chunk_writes in spans:
        for file_index, _ in chunk_writes:
            count, nbytes = per_file.get(file_index, (0, 0))
            per_file[file_index] = (count + 1, nbytes + size)
    return (array("Q", [n for _, offset, size, _ in spans for n in (offset, size)]).tobytes(),
            b"".join([cid for cid, _, _, _ in spans]),
            array("q", [n for i, (_, _, _, chunk_writes) in enumerate(spans)
                        for file_index, file_offset in chunk_writes
                        for n in (file_index, file_offset, i)]).tobytes(),
            per_file)


def _bind(writes: bytes, fds: dict[int, tuple[int, int]]) -> bytes:
    assert _natives is not None  # only the native path binds
    return _natives[2](writes, fds)


def coalesce_spans(spans: list[ChunkSpan], view: memoryview
                   ) -> list[tuple[int, int, list[memoryview]]]:
    """The block's chunk writes as runs of consecutive pieces per file: a block's chunks mostly
    follow each other in one file, so ~16 small pwrites become one pwritev."""
    runs: list[tuple[int, int, list[memoryview]]] = []
    open_runs: dict[int, tuple[int, int]] = {}  # file -> (its open run in runs, where it ends)
    for _, offset, size, writes in spans:
        piece = view[offset : offset + size]
        for file_index, file_offset in writes:
            run = open_runs.get(file_index)
            if run is not None and run[1] == file_offset:
                runs[run[0]][2].append(piece)
            else:
                run = (len(runs), file_offset)
                runs.append((file_index, file_offset, [piece]))
            open_runs[file_index] = (run[0], file_offset + size)
    return runs
