"""Immutable pack files: blocks (zstd frames of consecutive chunks) appended in file order.

A pack is written under a temporary name and renamed to the BLAKE3 of its bytes when it is
closed, so a pack name always proves its content and a crash leaves only an ignorable temp file.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import blake3
import zstandard

from patcher.manifest import Codec

PACK_TARGET_SIZE = 64 * 1024 * 1024
BLOCK_TARGET_RAW = 1024 * 1024
# A file with this much new data gets blocks of its own (see patcher.publish._group_blocks).
OWN_BLOCKS_MIN = 64 * 1024
# A stored block of which a version needs less than this share (raw bytes) has its needed chunks
# stored again in fresh blocks (see patcher.publish.mostly_dead_chunks).
RESTORE_LIVE_MIN = 0.9
# Store a block raw when zstd saves less than this fraction: decompressing costs more than it saves.
MIN_SAVING = 0.03


@dataclass(frozen=True, slots=True)
class StoredBlock:
    pack_slot: int  # which pack this writer produced (name known once the pack is sealed)
    offset: int
    stored_size: int
    raw_size: int
    codec: Codec


# Blocks that look compressible are compressed once with STRONG_PARAMS instead of the fast
# level: lazy2 matching with a short search, 6-byte minimum matches (game data: 5-byte matches
# mostly cost more than they save) and 2^17-entry tables (2^20, level 7's, gave 0.04% less for
# ~30% more CPU alone and 2-3x more beside the chunking thread: clearing 8 MiB of tables per
# 1 MiB block). Measured on the demo catalog (per 1 MiB block, one thread, min of 3):
# star-courier 1.0.0 (312 MB) 233.64 -> 232.86 MB for +0.18 CPU s (1.42 -> 1.60) against the
# former rule (level 3, then level 7 again for blocks level 3 shrank below 40%); tiny-tactics
# 1.0.1 27.41 -> 27.21 MB: a fresh install within 1.02x of per-file zstd -19 (its packs'
# middling blocks, which level 3 left alone, are where it lost; level 3 or a double-fast pass
# on the blocks level 1 shrinks to 45-97% leave it at 1.024-1.026x). Decoding is as fast as
# level 3's (zstd's decoder hardly depends on the level: 1.46-1.48 GB/s on 2.0.0's blocks).
# Cheaper passes lose much of what this one gains over level 1 (2.1% on the catalog's
# compressible blocks): lazy +0.9%, greedy +1.6%, a fast pass with 2^15-2^17 tables +1.8%.
STRONG_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=20, chain_log=17, hash_log=17, search_log=2, min_match=6, target_length=0,
    strategy=zstandard.STRATEGY_LAZY2, write_content_size=True,
)
# The levels STRONG_PARAMS stands for: a caller asking for this level or more gets its level
# for every compressible block.
STRONG_LEVEL = 7
# The fast pass, for blocks where the strong one buys little: level 1 (6-byte minimum matches)
# stores the demo catalog's blocks smaller than level 3 (5-byte matches; 369.4 against 370.0 MB)
# in half the CPU (0.57 against 1.13 s), textures and audio included.
FAST_LEVEL = 1
# A block that looks incompressible (level 1 saves less than this on samples of it) takes the
# fast level only: textures and audio cost lazy matching much time for nothing.
PROBE_MIN_SAVING = 0.03
PROBE_SAMPLES = 4
PROBE_SAMPLE = 8 * 1024
# Blocks whose samples level 1 shrinks to this share of their size (by 20-40%) take the fast
# level too: there the strong pass saved 0.5-1 MB per CPU second on the demo catalog (machine
# code and tables of mostly literals: lazy matching searches 7-8 ms per MB and finds little),
# against 2-3 MB per CPU second on the blocks either side. Skipping them cuts star-courier's
# compression from 2.25 to 1.52 CPU s (min of 2, one thread) for +0.17% of its fresh install
# (1.0150 -> 1.0166x per-file zstd -19; tiny-tactics 1.0175 -> 1.0186x; goal 1.02x).
# Bounds tried: [0.6, 0.97) 1.0193x on tiny-tactics; [0.5, 0.8) 1.0173x on star-courier.
MIDDLING = (0.6, 0.8)
# Kept for a block the probe misjudged: the fast level shrinking it below this share gets the
# strong pass too.
STRONG_RATIO = 0.4

_local = threading.local()


def _compressor(key: int | None) -> zstandard.ZstdCompressor:
    """This thread's compressor for a level (None: STRONG_PARAMS); a compressor is not safe to
    share between threads, and making one per block cost ~3% of the publish CPU (its tables)."""
    cache: dict[int | None, zstandard.ZstdCompressor] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    c = cache.get(key)
    if c is None:
        c = cache[key] = (zstandard.ZstdCompressor(compression_params=STRONG_PARAMS) if key is None
                          else zstandard.ZstdCompressor(level=key, write_content_size=True))
    return c


def probe_ratio(raw: bytes | memoryview) -> float:
    """Level 1's output size over the input size on a few samples spread over the block (~0.1 ms
    for 1 MiB); a function of the bytes alone, so every decision taken on it is deterministic."""
    if not raw:
        return 1.0
    if len(raw) <= PROBE_SAMPLES * PROBE_SAMPLE:
        sample = raw
    else:
        step = (len(raw) - PROBE_SAMPLE) // (PROBE_SAMPLES - 1)
        sample = b"".join(raw[i * step : i * step + PROBE_SAMPLE] for i in range(PROBE_SAMPLES))
    return len(_compressor(1).compress(sample)) / len(sample)


def looks_compressible(raw: bytes | memoryview) -> bool:
    return probe_ratio(raw) <= 1 - PROBE_MIN_SAVING


def wants_strong(ratio: float, level: int) -> bool:
    """Whether a block whose samples level 1 shrinks to ``ratio`` gets the strong pass first."""
    if ratio > 1 - PROBE_MIN_SAVING:
        return False
    return level >= STRONG_LEVEL or not MIDDLING[0] <= ratio < MIDDLING[1]


def compress_block(raw: bytes | memoryview, level: int) -> tuple[bytes, Codec]:
    """Compress one block: compressible-looking data once with STRONG_PARAMS (or at ``level``
    when that is at least STRONG_LEVEL), except middling blocks below that level; the rest at
    FAST_LEVEL (or ``level`` when lower; the strong pass follows only when that shrinks it below
    STRONG_RATIO); kept raw when zstd saves less than MIN_SAVING."""
    strong = None if level < STRONG_LEVEL else level
    if wants_strong(probe_ratio(raw), level):
        packed = _compressor(strong).compress(raw)
    else:
        packed = _compressor(min(level, FAST_LEVEL)).compress(raw)
        if len(packed) < STRONG_RATIO * len(raw):
            packed = min(packed, _compressor(strong).compress(raw), key=len)
    if len(packed) > len(raw) * (1 - MIN_SAVING):
        return bytes(raw), Codec.RAW  # a copy: the caller's buffer may be reused
    return packed, Codec.ZSTD


def decompress_block(stored: bytes, codec: Codec, raw_size: int) -> bytes:
    if codec is Codec.RAW:
        return stored
    return zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_size)


# Pack bytes are gathered in a buffer of this size and written a buffer at a time; where the
# filesystem takes it, with O_DIRECT: on this VM writing to fresh page-cache pages costs 2-4x
# the CPU of writing from one reused buffer straight to the disk (233 MB: 0.09-0.16 CPU s and
# 0.21-0.38 s wall buffered with fsync, 0.045 CPU s and 0.15 s wall direct), and a pack is
# synced before it is named anyway. Elsewhere (tmpfs, Windows, macOS) plain writes.
WRITE_BUFFER = 4 * 1024 * 1024
# O_DIRECT writes start at, and span, multiples of this (any disk's logical block divides it)
DIRECT_ALIGN = 4096


class _PackFile:
    """One pack file being written: O_DIRECT where the filesystem accepts it, else plain."""

    def __init__(self, path: Path, buffer: mmap.mmap) -> None:
        self.path = path
        self.buffer = buffer
        self.fill = 0  # bytes of the buffer not yet written
        self.size = 0  # bytes appended
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        direct = getattr(os, "O_DIRECT", 0)
        self.direct = False
        if direct:
            try:
                self.fd = os.open(path, flags | direct, 0o644)
                self.direct = True
                return
            except OSError as exc:  # tmpfs and others refuse it (the file may exist by now)
                if exc.errno != errno.EINVAL:
                    raise
        self.fd = os.open(path, flags, 0o644)

    def write(self, data: bytes) -> None:
        with memoryview(data) as src, memoryview(self.buffer) as buf:
            pos = 0
            while pos < len(src):
                n = min(len(src) - pos, len(buf) - self.fill)
                buf[self.fill : self.fill + n] = src[pos : pos + n]
                self.fill += n
                pos += n
                if self.fill == len(buf):
                    self._write(buf)
                    self.fill = 0
        self.size += len(data)

    def _write(self, view: memoryview) -> None:
        try:
            written = os.write(self.fd, view)
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise
            self._undirect()  # a filesystem that opens with O_DIRECT but refuses its writes
            written = os.write(self.fd, view)
        while written < len(view):  # a plain write may be short; a direct one is not
            written += os.write(self.fd, view[written:])

    def _undirect(self) -> None:
        import fcntl  # only where O_DIRECT exists

        fcntl.fcntl(self.fd, fcntl.F_SETFL,
                    fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~getattr(os, "O_DIRECT", 0))
        self.direct = False

    def finish(self) -> None:
        """Write what is left and sync the file (then close it)."""
        if self.fill:
            with memoryview(self.buffer) as buf:
                if self.direct:  # whole blocks, then cut back to the real size
                    padded = -(-self.fill // DIRECT_ALIGN) * DIRECT_ALIGN
                    buf[self.fill : padded] = bytes(padded - self.fill)
                    self._write(buf[:padded])
                    os.ftruncate(self.fd, self.size)
                else:
                    self._write(buf[: self.fill])
            self.fill = 0
        os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PackWriter:
    """Appends blocks to pack files in ``folder``, rolling over at ``target_size``."""

    def __init__(self, folder: Path, target_size: int = PACK_TARGET_SIZE) -> None:
        self.folder = folder
        self.target_size = target_size
        self.sealed: list[str] = []  # pack names by slot
        self._file: _PackFile | None = None
        self._buffer: mmap.mmap | None = None  # page-aligned, as O_DIRECT needs; reused
        self._hasher = blake3.blake3()
        folder.mkdir(parents=True, exist_ok=True)

    def append(self, data: bytes, raw_size: int, codec: Codec) -> StoredBlock:
        if self._file is None or self._file.size >= self.target_size:
            self._seal()
            if self._buffer is None:
                self._buffer = mmap.mmap(-1, WRITE_BUFFER)
            self._file = _PackFile(self.folder / f".tmp-{secrets.token_hex(8)}", self._buffer)
            self._hasher = blake3.blake3()
        block = StoredBlock(len(self.sealed), self._file.size, len(data), raw_size, codec)
        self._file.write(data)
        self._hasher.update(data)
        return block

    def _seal(self) -> None:
        if self._file is None:
            return
        tmp = self._file.path
        self._file.finish()
        self._file = None
        name = self._hasher.hexdigest()
        final = self.folder / f"{name}.pack"
        if final.exists():
            tmp.unlink()  # identical pack already stored
        else:
            os.replace(tmp, final)
        self.sealed.append(name)

    def close(self) -> list[str]:
        self._seal()
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        return self.sealed

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file.path.unlink(missing_ok=True)
            self._file = None
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
