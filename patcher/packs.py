"""Immutable pack files: blocks (zstd frames of consecutive chunks) appended in file order.

A pack is written under a temporary name and renamed to the BLAKE3 of its bytes when it is
closed, so a pack name always proves its content and a crash leaves only an ignorable temp file.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


# Blocks that the fast level already shrinks below STRONG_RATIO are compressed again at
# STRONG_LEVEL: that is where a stronger level pays (measured on the demo catalog's 2.0.0 build,
# 331 MB: 86 such blocks, 75 MB, shrink by 1.69 MB more for +0.88 CPU s, while the other 528
# blocks would gain little for much more time); it brings a fresh install from 1.026x to ~1.019x
# of per-file zstd -19.
STRONG_RATIO = 0.4
STRONG_LEVEL = 7


def compress_block(raw: bytes, level: int) -> tuple[bytes, Codec]:
    """Compress one block; incompressible data (textures, audio) is detected cheaply and kept
    raw, very compressible data gets at least ``STRONG_LEVEL``."""
    if level > 3 and len(raw) > 4096:
        probe = zstandard.ZstdCompressor(level=1).compress(raw)
        if len(probe) > len(raw) * (1 - MIN_SAVING):
            return raw, Codec.RAW
    packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    if len(packed) > len(raw) * (1 - MIN_SAVING):
        return raw, Codec.RAW
    if level < STRONG_LEVEL and len(packed) < STRONG_RATIO * len(raw):
        stronger = zstandard.ZstdCompressor(level=STRONG_LEVEL, write_content_size=True).compress(raw)
        if len(stronger) < len(packed):
            packed = stronger
    return packed, Codec.ZSTD


def decompress_block(stored: bytes, codec: Codec, raw_size: int) -> bytes:
    if codec is Codec.RAW:
        return stored
    return zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_size)


class PackWriter:
    """Appends blocks to pack files in ``folder``, rolling over at ``target_size``."""

    def __init__(self, folder: Path, target_size: int = PACK_TARGET_SIZE) -> None:
        self.folder = folder
        self.target_size = target_size
        self.sealed: list[str] = []  # pack names by slot
        self._fh: BinaryIO | None = None
        self._tmp: Path | None = None
        self._hasher = blake3.blake3()
        self._size = 0
        folder.mkdir(parents=True, exist_ok=True)

    def append(self, data: bytes, raw_size: int, codec: Codec) -> StoredBlock:
        if self._tmp is None or self._size >= self.target_size:
            self._seal()
            self._tmp = self.folder / f".tmp-{secrets.token_hex(8)}"
            self._fh = self._tmp.open("wb")
            self._hasher = blake3.blake3()
            self._size = 0
        assert self._fh is not None
        self._fh.write(data)
        self._hasher.update(data)
        block = StoredBlock(len(self.sealed), self._size, len(data), raw_size, codec)
        self._size += len(data)
        return block

    def _seal(self) -> None:
        if self._tmp is None:
            return
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        name = self._hasher.hexdigest()
        final = self.folder / f"{name}.pack"
        if final.exists():
            self._tmp.unlink()  # identical pack already stored
        else:
            os.replace(self._tmp, final)
        self.sealed.append(name)
        self._tmp = None
        self._fh = None

    def close(self) -> list[str]:
        self._seal()
        return self.sealed

    def abort(self) -> None:
        if self._tmp is not None:
            if self._fh is not None:
                self._fh.close()
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
