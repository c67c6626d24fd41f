"""The publisher's faster paths give the same results as the slow ones they replace
(patcher.publish, patcher.packs): chunk records read from the previous manifest, the SHA-256
through a read buffer, the fast level for middling blocks.

Real build folders, a real store, real zstd: no mocks.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
from pathlib import Path

import blake3
import pytest
import zstandard

from patcher.manifest import Codec
from patcher.packs import (
    FAST_LEVEL,
    MIDDLING,
    STRONG_LEVEL,
    STRONG_PARAMS,
    compress_block,
    decompress_block,
    probe_ratio,
    wants_strong,
)
from patcher.publish import SHA_BUFFER, _file_hashes, _PriorRecords, _sha256_file, publish
from patcher.store import Store
from testing.testdata import KiB, MiB, rand, text


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_chunk_records_from_the_previous_manifest_equal_the_chunk_index(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    try:
        big = text(1, 2 * MiB)
        versions = {
            "1": {"a.txt": big, "b.bin": rand(2, 700 * KiB), "c.txt": text(3, 300 * KiB)},
            # a.txt keeps a third of its blocks' bytes: its live chunks are stored again
            "2": {"a.txt": big[: 700 * KiB] + text(4, 64 * KiB), "b.bin": rand(2, 700 * KiB),
                  "d.txt": text(5, 200 * KiB)},
            "3": {"a.txt": big[: 700 * KiB] + text(6, 64 * KiB), "b.bin": rand(7, 100 * KiB),
                  "d.txt": text(5, 200 * KiB)},
        }
        restored = 0
        for v, files in versions.items():
            report = publish(store, "p", v, _write(tmp_path / v, files), workers=2,
                             patch_previous=0)
            restored += report.restored_chunks
            m = store.read_manifest("p", v)
            chunks = {c.id: c for f in m.files for c in f.chunks}
            prior = _PriorRecords(m).records(chunks.values())
            assert prior.keys() == chunks.keys()
            assert prior == store.lookup_chunks("p", chunks)
            # every file's BLAKE3 is recorded, whether computed ahead of its chunking (a size the
            # previous version has) or with its SHA-256 (the rest)
            digests = {blake3.blake3(d).hexdigest(): (len(d), hashlib.sha256(d).hexdigest())
                       for d in files.values()}
            assert store.known_files("p", digests) == digests
        assert restored > 0  # the re-stored chunks' records moved, and the manifest with them
    finally:
        store.close()


def test_sha256_and_blake3_through_the_read_buffer(tmp_path: Path) -> None:
    for size in (0, 1, SHA_BUFFER, 2 * SHA_BUFFER + 123):
        p = tmp_path / f"f{size}"
        data = rand(size, size)
        p.write_bytes(data)
        assert _sha256_file(p) == hashlib.sha256(data).hexdigest()
        assert _file_hashes(p, True) == (hashlib.sha256(data).hexdigest(),
                                         blake3.blake3(data).hexdigest())


def _middling(size: int) -> bytes:
    """Text with random runs: level 1 shrinks it by 20-40%."""
    rnd = random.Random(9)
    words, noise = text(9, size), rand(10, size)
    out = bytearray()
    while len(out) < size:
        n = rnd.randrange(64, 512)
        src = noise if rnd.random() < 0.4 else words
        start = rnd.randrange(0, size - n)
        out += src[start : start + n]
    return bytes(out[:size])


def test_middling_blocks_get_the_fast_level_below_the_strong_level() -> None:
    raw = _middling(1 * MiB)
    ratio = probe_ratio(raw)
    assert MIDDLING[0] <= ratio < MIDDLING[1]
    assert not wants_strong(ratio, 3) and wants_strong(ratio, STRONG_LEVEL)
    data, codec = compress_block(raw, 3)
    fast = zstandard.ZstdCompressor(level=FAST_LEVEL, write_content_size=True).compress(raw)
    assert codec is Codec.ZSTD and data == fast
    assert decompress_block(data, codec, len(raw)) == raw
    # a release pipeline asking for the strong level gets it on these blocks too
    data, codec = compress_block(raw, STRONG_LEVEL)
    strong = zstandard.ZstdCompressor(level=STRONG_LEVEL, write_content_size=True).compress(raw)
    assert codec is Codec.ZSTD and data == strong


def test_compressible_blocks_either_side_of_the_middle_get_the_strong_pass() -> None:
    words = text(11, 512 * KiB)
    assert probe_ratio(words) < MIDDLING[0] and wants_strong(probe_ratio(words), 3)
    data, codec = compress_block(words, 3)
    assert codec is Codec.ZSTD
    assert data == zstandard.ZstdCompressor(compression_params=STRONG_PARAMS).compress(words)
    noise = rand(12, 512 * KiB)
    assert not wants_strong(probe_ratio(noise), 3) and not wants_strong(probe_ratio(noise), 19)
    assert compress_block(noise, 3) == (noise, Codec.RAW)


def _pack_writer_round_trip(folder: Path) -> None:
    from patcher.packs import WRITE_BUFFER, PackWriter

    # blocks of odd sizes across several write buffers, a tail that is no multiple of a page
    parts = [rand(20 + i, WRITE_BUFFER // 3 + 4097 * i) for i in range(9)] + [b"tail" * 5]
    w = PackWriter(folder, target_size=3 * WRITE_BUFFER)
    placed = [w.append(p, len(p), Codec.RAW) for p in parts]
    names = w.close()
    assert len(names) == 2 and not [p for p in folder.iterdir() if p.name.startswith(".tmp")]
    for slot, name in enumerate(names):
        data = (folder / f"{name}.pack").read_bytes()
        assert blake3.blake3(data).hexdigest() == name
        mine = [(b, p) for b, p in zip(placed, parts, strict=True) if b.pack_slot == slot]
        assert data == b"".join(p for _, p in mine)  # exact size: no padding left behind
        for b, p in mine:
            assert data[b.offset : b.offset + b.stored_size] == p


def test_pack_writer_buffers_and_writes_exact_packs(tmp_path: Path) -> None:
    _pack_writer_round_trip(tmp_path / "packs")


def test_pack_writer_on_tmpfs(tmp_path: Path) -> None:
    """tmpfs (and other filesystems) may refuse O_DIRECT: the packs are the same bytes."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="packs-"))
    try:
        _pack_writer_round_trip(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_pack_writer_abort_removes_the_unsealed_pack(tmp_path: Path) -> None:
    from patcher.packs import WRITE_BUFFER, PackWriter

    w = PackWriter(tmp_path / "packs")
    w.append(rand(30, WRITE_BUFFER + 5), WRITE_BUFFER + 5, Codec.RAW)
    w.abort()
    assert list((tmp_path / "packs").iterdir()) == []
