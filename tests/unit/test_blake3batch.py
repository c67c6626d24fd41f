"""The native BLAKE3 of a block's chunks (engine/io/_blake3batch.c, built by
scripts/build_native.sh from Debian's BLAKE3 C sources) gives the blake3 package's digests, and
the block check names the first chunk that differs with it and without it; verify's
``check_chunks`` flags each chunk of a file as right, wrong or cut short."""

from __future__ import annotations

import glob
import os
import random
from array import array
from pathlib import Path

import blake3
import pytest

from engine.io import blockio, verify
from engine.io.blockio import BlockCorrupt, check_chunks

SOURCES = glob.glob("/usr/share/cargo/registry/blake3-*/c/blake3.h")


def test_the_native_module_is_built_where_its_sources_are() -> None:
    """The set-up builds it wherever Debian's BLAKE3 sources are installed: a build that
    silently failed would cost every install its speed, not its correctness."""
    if not SOURCES:
        pytest.skip("no BLAKE3 C sources here (librust-blake3-dev): the engine uses blake3")
    assert blockio._hash_spans is not None, "run scripts/build_native.sh"


def native() -> blockio.HashSpans:
    if blockio._hash_spans is None:
        pytest.skip("engine/io/_blake3batch is not built here")
    return blockio._hash_spans


def test_digests_are_the_blake3_packages() -> None:
    hash_spans = native()
    rnd = random.Random(27)
    data = rnd.randbytes(1 << 20)
    spans = [(0, 0), (0, 1), (5, 1023), (1024, 1024), (4097, 65536), (0, 1 << 20),
             ((1 << 20) - 1, 1), (1 << 20, 0)]
    spans += [(o, rnd.randrange(1, (1 << 20) - o + 1))
              for o in (rnd.randrange(1 << 20) for _ in range(40))]
    got = hash_spans(memoryview(data), array("Q", [n for span in spans for n in span]))
    assert got == b"".join(blake3.blake3(data[o:o + n]).digest() for o, n in spans)
    assert hash_spans(b"", array("Q")) == b""


@pytest.mark.parametrize("span", [(0, (1 << 20) + 1), ((1 << 20) + 1, 0), (1, 1 << 20),
                                  (2**64 - 1, 2)])
def test_a_span_outside_the_data_is_refused(span: tuple[int, int]) -> None:
    hash_spans = native()
    with pytest.raises(ValueError, match="outside"):
        hash_spans(bytes(1 << 20), array("Q", span))


def test_spans_need_no_alignment() -> None:
    """The spans are copied before they are read (another thread may change the caller's
    buffer once the GIL is released): a buffer at an odd address is read as well."""
    data = bytes(range(256)) * 64
    packed = array("Q", [3, 1000, 0, len(data)]).tobytes()
    odd = memoryview(b"\0" + packed)[1:]
    assert native()(data, odd) == blake3.blake3(data[3:1003]).digest() + \
        blake3.blake3(data).digest()


def test_spans_that_are_not_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="pairs"):
        native()(bytes(64), array("Q", [0, 1, 2]).tobytes() + b"\0")


@pytest.mark.parametrize("with_native", [True, False])
def test_the_first_chunk_that_differs_is_named(with_native: bool) -> None:
    hash_spans = native() if with_native else None
    data = os.urandom(3 * 4096)
    ids = [blake3.blake3(data[i * 4096:(i + 1) * 4096]).digest() for i in range(3)]
    spans = [(cid, i * 4096, 4096, [(0, i * 4096)]) for i, cid in enumerate(ids)]
    check_chunks(7, memoryview(data), spans, hash_spans)
    broken = bytearray(data)
    broken[4096 + 10] ^= 1
    broken[2 * 4096] ^= 1
    with pytest.raises(BlockCorrupt) as info:
        check_chunks(7, memoryview(bytes(broken)), spans, hash_spans)
    assert info.value.block == 7 and ids[1].hex()[:12] in info.value.reason


# -- check_chunks: verify's reads and hashes of a piece in one call ---------------------------

def checker() -> verify.CheckChunks:
    if verify._check_chunks is None:
        pytest.skip("engine/io/_blake3batch is not built here")
    return verify._check_chunks


def pairs(spans: list[tuple[int, int]]) -> array[int]:
    return array("Q", [v for span in spans for v in span])


def test_check_chunks_flags_each_chunk_ok_wrong_or_cut(tmp_path: Path) -> None:
    """Chunks read in groups of up to ``read_bytes``: a flipped byte flags its chunk only, a
    file cut short flags every chunk past its end (and the one it ends in) as cut."""
    check = checker()
    rnd = random.Random(30)
    data = bytearray(rnd.randbytes(699_000))
    sizes = [1, 4095, 65536, 100_000, 17, 250_000, 279_351 - 100_000, 100_000]
    spans, at = [], 0
    for size in sizes:
        spans.append((at, size))
        at += size
    assert at == len(data)
    ids = b"".join(blake3.blake3(data[o:o + n]).digest() for o, n in spans)
    path = tmp_path / "f.bin"
    buf = memoryview(bytearray(256 * 1024))
    for read_bytes in (1, 70_000, 256 * 1024):
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert check(fd, pairs(spans), ids, buf, read_bytes) == bytes(len(spans))
            data[spans[3][0] + 99_999] ^= 1  # the last byte of chunk 3
            path.write_bytes(data)
            assert check(fd, pairs(spans), ids, buf, read_bytes) == bytes([0, 0, 0, 1, 0, 0, 0, 0])
            data[spans[3][0] + 99_999] ^= 1
            path.write_bytes(data)
            os.truncate(path, spans[5][0] + 10)  # inside chunk 5
            assert check(fd, pairs(spans), ids, buf, read_bytes) == bytes([0, 0, 0, 0, 0, 2, 2, 2])
        finally:
            os.close(fd)


@pytest.mark.parametrize("spans", [[(0, 300_000)], [(10, 5), (12, 5)], [(2**63, 1)]],
                         ids=["larger_than_buffer", "overlapping", "beyond_any_file"])
def test_check_chunks_refuses_what_it_cannot_read(tmp_path: Path, spans: list[tuple[int, int]]
                                                  ) -> None:
    check = checker()
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="chunk"):
            check(fd, pairs(spans), bytes(32 * len(spans)), memoryview(bytearray(256 * 1024)),
                  256 * 1024)
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="one id each"):
        check(0, pairs([(0, 1)]), bytes(31), memoryview(bytearray(16)), 16)


def test_check_chunks_raises_the_read_error(tmp_path: Path) -> None:
    """A read that fails (here a folder's descriptor: EISDIR) is an OSError with its errno,
    never a chunk flagged as damaged."""
    check = checker()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(IsADirectoryError):
            check(fd, pairs([(0, 10)]), bytes(32), memoryview(bytearray(64)), 64)
    finally:
        os.close(fd)
