"""Block processing, run in worker threads (zstd, BLAKE3 and pwrite release the GIL):
decompress a fetched block, verify every chunk's BLAKE3, write chunks at their file offsets.
A chunk that fails its hash is never written.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from engine.core.planner import BlockJob
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


def process_block(job: BlockJob, stored: bytes | memoryview, staging: Staging) -> list[int]:
    """Verify and write one block; returns the file indexes written (for fsync batching)."""
    raw = decode_block(job, stored)
    view = memoryview(raw)
    for t in job.targets:
        piece = view[t.offset : t.offset + t.size]
        if blake3.blake3(piece).hexdigest() != t.chunk_id:
            raise BlockCorrupt(job.index, f"chunk {t.chunk_id[:12]} hash mismatch")
    touched: list[int] = []
    try:
        for file_index, offset, pieces in coalesce_writes(job, view):
            staging.pwritev(file_index, pieces, offset)
            touched.append(file_index)
    except OSError as exc:
        raise translate_os_error(exc, "writing staged files") from exc
    return touched


def coalesce_writes(job: BlockJob, view: memoryview
                    ) -> list[tuple[int, int, list[memoryview]]]:
    """The block's chunk writes as runs of consecutive pieces per file: a block's chunks mostly
    follow each other in one file, so ~16 small pwrites become one pwritev."""
    runs: list[tuple[int, int, list[memoryview]]] = []
    open_runs: dict[int, tuple[int, int]] = {}  # file -> (its open run in runs, where it ends)
    for t in job.targets:
        piece = view[t.offset : t.offset + t.size]
        for w in t.writes:
            run = open_runs.get(w.file_index)
            if run is not None and run[1] == w.file_offset:
                runs[run[0]][2].append(piece)
            else:
                run = (len(runs), w.file_offset)
                runs.append((w.file_index, w.file_offset, [piece]))
            open_runs[w.file_index] = (run[0], w.file_offset + t.size)
    return runs
