"""Content-defined chunking (patcher.chunking): real FastCDC over real bytes and files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
import pytest

from patcher.chunking import (
    CHUNK_AVG,
    CHUNK_MAX,
    CHUNK_MIN,
    ChunkedFile,
    boundaries,
    chunk_buffer,
    chunk_file,
    chunk_id,
    sha256_file,
)
from testing.testdata import KiB, MiB, rand, text


@pytest.fixture(scope="module")
def buf4m() -> bytes:
    return rand(1, 4 * MiB)


def assert_valid(data: bytes, cf: ChunkedFile) -> None:
    """Chunks tile the data, respect min/max sizes, and carry the right ids and hash."""
    assert cf.size == len(data)
    assert cf.sha256 == hashlib.sha256(data).hexdigest()
    pos = 0
    for i, c in enumerate(cf.chunks):
        assert c.offset == pos, f"chunk {i} does not start where the previous one ended"
        assert 0 < c.size <= CHUNK_MAX
        if i < len(cf.chunks) - 1:
            assert c.size >= CHUNK_MIN, f"chunk {i} of {c.size} bytes is below the minimum"
        assert c.id == blake3.blake3(data[c.offset : c.offset + c.size]).hexdigest()
        assert len(c.id) == 64
        pos += c.size
    assert pos == len(data)


def test_constants_match_the_format() -> None:
    sizes = {"min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX}
    assert sizes == {"min": 16 * KiB, "avg": 64 * KiB, "max": 256 * KiB}


def test_chunk_id_is_blake3_hex() -> None:
    data = b"hello chunk"
    assert chunk_id(data) == blake3.blake3(data).hexdigest()
    assert chunk_id(memoryview(data)) == chunk_id(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(rand(2, 4 * MiB), id="random-4MiB"),
        pytest.param(text(3, 2 * MiB), id="text-2MiB"),
        pytest.param(bytes(3 * MiB), id="zeros-3MiB"),
        pytest.param(b"ab" * (700 * KiB), id="periodic"),
        pytest.param(rand(4, MiB) + bytes(MiB) + text(5, MiB), id="mixed"),
    ],
)
def test_chunks_tile_and_respect_sizes(data: bytes) -> None:
    cf = chunk_buffer(data)
    assert_valid(data, cf)
    assert len(cf.chunks) >= len(data) // CHUNK_MAX


def test_average_size_is_near_target(buf4m: bytes) -> None:
    sizes = [s for _, s in boundaries(buf4m)]
    avg = sum(sizes) / len(sizes)
    # FastCDC with normalized chunking: the mean sits near (not exactly at) the target.
    assert CHUNK_AVG / 2 <= avg <= CHUNK_AVG * 2, avg
    assert len(set(sizes)) > len(sizes) // 2, "boundaries should depend on content, not be fixed"


def test_zero_data_is_cut_at_the_maximum() -> None:
    """No content-defined cut point in uniform data: the maximum size bounds every chunk."""
    data = bytes(CHUNK_MAX * 4 + 100)
    cf = chunk_buffer(data)
    assert_valid(data, cf)
    assert [c.size for c in cf.chunks] == [CHUNK_MAX] * 4 + [100]
    # identical chunks share one id: dedup within a file
    assert len({c.id for c in cf.chunks}) == 2


def test_boundaries_are_deterministic(buf4m: bytes) -> None:
    first = list(boundaries(buf4m))
    assert first == list(boundaries(bytes(buf4m)))  # a fresh copy of the same content
    assert first == list(boundaries(memoryview(buf4m)))
    assert chunk_buffer(buf4m) == chunk_buffer(bytearray(buf4m))


def test_boundaries_do_not_depend_on_position_in_a_larger_buffer(buf4m: bytes) -> None:
    """The same content after a shared prefix resynchronises: later chunks are identical."""
    a = chunk_buffer(buf4m)
    b = chunk_buffer(rand(9, 300 * KiB) + buf4m)
    ids_a = [c.id for c in a.chunks]
    ids_b = {c.id for c in b.chunks}
    assert sum(i in ids_b for i in ids_a) >= len(ids_a) - 3


@pytest.mark.parametrize("size", [1, 100, CHUNK_MIN - 1, CHUNK_MIN, CHUNK_MIN + 1])
def test_small_data_is_one_chunk(size: int) -> None:
    data = rand(size, size)
    cf = chunk_buffer(data)
    assert_valid(data, cf)
    assert len(cf.chunks) == 1
    assert cf.chunks[0].offset == 0 and cf.chunks[0].size == size


def test_exactly_max_size_is_one_or_more_valid_chunks() -> None:
    data = rand(11, CHUNK_MAX)
    cf = chunk_buffer(data)
    assert_valid(data, cf)


def test_empty_buffer() -> None:
    assert list(boundaries(b"")) == []
    cf = chunk_buffer(b"")
    assert cf == ChunkedFile(0, hashlib.sha256(b"").hexdigest(), ())


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    assert chunk_file(p) == ChunkedFile(0, hashlib.sha256(b"").hexdigest(), ())
    assert chunk_file(p) == chunk_buffer(b"")
    assert sha256_file(p) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("size", [1, CHUNK_MIN + 7, 3 * MiB + 12345])
def test_chunk_file_equals_chunk_buffer(tmp_path: Path, size: int) -> None:
    data = rand(size, size // 2) + text(size, size - size // 2)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    cf = chunk_file(p)
    assert cf == chunk_buffer(data)
    assert_valid(data, cf)
    assert sha256_file(p) == cf.sha256
    assert sha256_file(p, bufsize=4096) == cf.sha256


def test_insertion_near_start_keeps_most_chunks(buf4m: bytes) -> None:
    before = chunk_buffer(buf4m)
    changed = buf4m[:5000] + b"INSERTED" * 100 + buf4m[5000:]
    after = chunk_buffer(changed)
    assert_valid(changed, after)
    old_ids = {c.id for c in before.chunks}
    new_ids = [c.id for c in after.chunks]
    kept = sum(i in old_ids for i in new_ids)
    assert kept >= len(new_ids) - 3, f"only {kept} of {len(new_ids)} chunks reused"
    # the bytes after the affected region are cut at the same (shifted) boundaries
    shift = len(changed) - len(buf4m)
    old_tail = {(c.offset + shift, c.size) for c in before.chunks if c.offset > 300 * KiB}
    new_tail = {(c.offset, c.size) for c in after.chunks if c.offset > 300 * KiB + shift}
    assert new_tail <= old_tail


def test_deletion_and_in_place_edit_keep_most_chunks(buf4m: bytes) -> None:
    before = {c.id for c in chunk_buffer(buf4m).chunks}
    mid = len(buf4m) // 2
    deleted = buf4m[:mid] + buf4m[mid + 777 :]
    edited = bytearray(buf4m)
    edited[mid : mid + 64] = bytes(64)
    for variant in (deleted, bytes(edited)):
        ids = [c.id for c in chunk_buffer(variant).chunks]
        assert sum(i not in before for i in ids) <= 3


def test_fixed_size_chunking_would_not_survive_an_insertion(buf4m: bytes) -> None:
    """Sanity check of the property above: it is content-defined, not an artefact of the data."""
    step = CHUNK_AVG
    fixed = {buf4m[i : i + step] for i in range(0, len(buf4m), step)}
    shifted = buf4m[:10] + b"x" + buf4m[10:]
    refixed = [shifted[i : i + step] for i in range(0, len(shifted), step)]
    assert sum(c in fixed for c in refixed) == 0
