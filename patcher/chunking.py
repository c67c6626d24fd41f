"""Content-defined chunking (FastCDC) and hashing of files.

Chunk boundaries depend on content, so an insertion shifts only nearby boundaries and an update
can reuse every other chunk. Chunk id = BLAKE3 of the uncompressed bytes; file hash = SHA-256
(the seeds' ``hash_sha256``).
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

CHUNK_MIN = 16 * 1024
CHUNK_AVG = 64 * 1024
CHUNK_MAX = 256 * 1024


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file: where it sits in the file and its content id."""

    offset: int
    size: int
    id: str


@dataclass(frozen=True, slots=True)
class ChunkedFile:
    size: int
    sha256: str
    chunks: tuple[ChunkRef, ...]


def chunk_id(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def boundaries(data: bytes | memoryview | mmap.mmap) -> Iterator[tuple[int, int]]:
    """Yield (offset, size) of each content-defined chunk of ``data``."""
    if len(data) == 0:
        return
    # the compiled chunker (the pure-Python one is ~100x slower), imported here: the package
    # loads click (~80-100 ms), which the engine's install start (it only needs the sizes
    # above) would pay for nothing (issue 13, first byte)
    from fastcdc.fastcdc_cy import fastcdc_cy

    for chunk in fastcdc_cy(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX):
        yield chunk.offset, chunk.length


def chunk_refs(data: bytes | memoryview | mmap.mmap) -> tuple[ChunkRef, ...]:
    """The content-defined chunks of ``data`` with their ids (no file hash)."""
    with memoryview(data) as view:
        return tuple(
            ChunkRef(offset, size, chunk_id(view[offset : offset + size]))
            for offset, size in boundaries(view)
        )


def chunk_buffer(data: bytes | memoryview | mmap.mmap) -> ChunkedFile:
    refs = chunk_refs(data)
    with memoryview(data) as view:
        sha = hashlib.sha256(view).hexdigest()
    return ChunkedFile(len(data), sha, refs)


def chunk_file(path: Path) -> ChunkedFile:
    """Chunk and hash a file through mmap, so memory does not grow with file size."""
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return ChunkedFile(0, hashlib.sha256(b"").hexdigest(), ())
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return chunk_buffer(mm)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(bufsize):
            digest.update(block)
    return digest.hexdigest()
