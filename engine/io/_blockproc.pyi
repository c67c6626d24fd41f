from array import array

_Buffer = bytes | bytearray | memoryview | array[int]

DIRECT_MIN: int  # runs shorter than this are written through the page cache

def process(stored: bytes | bytearray | memoryview, zstd: bool, raw_size: int, spans: _Buffer,
            ids: _Buffer, writes: _Buffer) -> int:
    """Decode ``stored`` (zstd, or raw when not ``zstd``), check every chunk's BLAKE3, then
    write the chunks: ``spans`` are uint64 (offset, size) pairs in the decoded block, ``ids``
    the chunks' 32-byte ids joined, ``writes`` int64 (fd, direct fd or -1, file offset, span
    index) quads: the direct fd (the same file opened with O_DIRECT) takes a run's whole pages.
    -1 when written, else the index of the first chunk whose hash differs (nothing written).
    ValueError: the block does not decode to ``raw_size`` bytes ("zstd: ...", "decoded N bytes,
    expected M") or a span lies outside it; OSError: a write failed (some may be written).

    A raw block in a writable buffer is copied before it is hashed; one in a read-only buffer is
    hashed and written where it is (unless written direct). Read-only is the caller's promise
    that nothing writes those bytes until the call returns (a read-only view of memory another
    thread writes would write bytes that were not hashed)."""

def gather(ids: bytes | bytearray, block_offset: array[int], size: array[int],
           rows_start: array[int], rows: array[int], row_file: array[int],
           row_offset: array[int], order: array[int], lo: int, hi: int
           ) -> tuple[bytes, bytes, bytes, dict[int, tuple[int, int]]]:
    """The unique chunks ``order[lo:hi]`` (one block's) read from a manifest's chunk table
    (unsigned 32- or 64-bit arrays): (spans and ids as ``process`` takes them, writes as int64
    (file index, file offset, span) triples for ``bind``, {file index: (chunk writes, bytes)}).
    IndexError: an index the arrays do not hold; TypeError: an array of another kind."""

def bind(writes: _Buffer, fds: dict[int, tuple[int, int]]) -> bytes:
    """``gather``'s triples as ``process``'s (fd, direct fd or -1, file offset, span) quads,
    each file's fds from ``fds``. KeyError: a file ``fds`` does not hold."""
