"""The native BLAKE3 of a block's chunks (engine/io/_blake3batch.c, built by
scripts/build_native.sh from Debian's BLAKE3 C sources) gives the blake3 package's digests, and
the block check names the first chunk that differs with it and without it."""

from __future__ import annotations

import glob
import os
import random
from array import array

import blake3
import pytest

from engine.io import blockio
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
