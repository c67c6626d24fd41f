"""The native block processor (engine/io/_blockproc.c, built by scripts/build_native.sh) stages
the very bytes the Python path does, raw or zstd, and fails the same way: a chunk that differs
or a block that does not decode is BlockCorrupt and writes nothing, a failed write is the
engine's I/O error. Every test runs both paths on real staged files."""

from __future__ import annotations

import ctypes
import errno
import glob
import mmap
import os
import random
import subprocess
import threading
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest
import zstandard

from engine.core.errors import EngineError, ErrorCode
from engine.core.planner import BlockJob, ChunkTarget, ChunkWrite
from engine.io import blockio
from engine.io.blockio import BlockCorrupt, BlockWritten, process_block
from engine.io.staging import Staging
from patcher.manifest import Codec, FileEntry, Manifest

BLAKE3_SOURCES = glob.glob("/usr/share/cargo/registry/blake3-*/c/blake3.h")
FILE_SIZES = (300_000, 70_000, 5)


def zstd_header_here() -> bool:
    done = subprocess.run(["gcc", "-E", "-x", "c", "-"], input=b"#include <zstd.h>\n",
                          capture_output=True, check=False)
    return done.returncode == 0


def test_the_native_module_is_built_where_its_sources_are() -> None:
    """The set-up builds it wherever Debian's BLAKE3 sources and libzstd-dev are installed: a
    build that silently failed would cost every install its speed, not its correctness."""
    try:
        have = bool(BLAKE3_SOURCES) and zstd_header_here()
    except FileNotFoundError:  # no gcc
        have = False
    if not have:
        pytest.skip("no gcc, BLAKE3 C sources or zstd.h here: the engine processes in Python")
    assert blockio._process is not None, "run scripts/build_native.sh"


def native() -> blockio.ProcessBlock:
    if blockio._process is None:
        pytest.skip("engine/io/_blockproc is not built here")
    return blockio._process


PATHS = ["native", "python"]


def path_of(which: str) -> blockio.ProcessBlock | None:
    return native() if which == "native" else None


def staging_at(root: Path, direct: bool = True) -> Staging:
    files = tuple(FileEntry(f"f{i}.bin", size, 0o644, "e3" * 32, ())
                  for i, size in enumerate(FILE_SIZES))
    staging = Staging(root, "t", Manifest("p", "1", files, (), {}),
                      direct_writes="on" if direct else "off")
    staging.prepare(list(range(len(files))))
    return staging


def staged(staging: Staging) -> list[bytes]:
    return [staging.path(i).read_bytes() for i in range(len(FILE_SIZES))]


def untouched() -> list[bytes]:
    return [bytes(size) for size in FILE_SIZES]


def layout(seed: int) -> tuple[bytes, list[ChunkTarget]]:
    """A block of ~1 MiB of compressible bytes cut in chunks of varied size: most follow each
    other in file 0, some go to file 1 after a gap, one is written twice (files 0 and 1), one
    is empty and one goes to the 5-byte file 2."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randrange(3, 12)) for _ in range(64)]
    raw = b"".join(rnd.choice(words) for _ in range(40_000))
    sizes = [rnd.randrange(1, 20_000) for _ in range(12)] + [0, 5]
    targets: list[ChunkTarget] = []
    offset, file0, file1 = 0, 17, 30_000
    for i, size in enumerate(sizes):
        if size == 5:
            writes: tuple[ChunkWrite, ...] = (ChunkWrite(2, 0),)
        elif i % 4 == 3:
            writes = (ChunkWrite(1, file1),)
            file1 += size + 9  # a gap: a new run
        elif i == 1:  # file 1's first 20,000 bytes
            writes = (ChunkWrite(0, file0), ChunkWrite(1, 0))
            file0 += size
        else:
            writes = (ChunkWrite(0, file0),)
            file0 += size
        piece = raw[offset : offset + size]
        targets.append(ChunkTarget(blake3.blake3(piece).hexdigest(), offset, size, writes))
        offset += size
    return raw[:offset], targets


def block(raw: bytes, targets: list[ChunkTarget], codec: Codec, index: int = 3
          ) -> tuple[BlockJob, bytes]:
    stored = zstandard.ZstdCompressor(level=3).compress(raw) if codec is Codec.ZSTD else raw
    return BlockJob(index, "p", 0, len(stored), len(raw), codec, tuple(targets)), stored


def expected(raw: bytes, targets: list[ChunkTarget]) -> list[bytes]:
    files = [bytearray(size) for size in FILE_SIZES]
    for t in targets:
        for w in t.writes:
            files[w.file_index][w.file_offset : w.file_offset + t.size] = \
                raw[t.offset : t.offset + t.size]
    return [bytes(f) for f in files]


@pytest.mark.parametrize("readonly", [True, False])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("codec", [Codec.RAW, Codec.ZSTD])
def test_both_paths_stage_the_same_bytes(tmp_path: Path, codec: Codec, direct: bool,
                                         readonly: bool) -> None:
    """A writable buffer's raw block is copied before it is hashed; a read-only one (what the
    range threads hand over) is hashed and written where it is, at any page phase."""
    process = native()
    raw, targets = layout(1)
    job, stored = block(raw, targets, codec)
    results: dict[str, tuple[BlockWritten, list[bytes]]] = {}
    for name, which in (("native", process), ("python", None)):
        staging = staging_at(tmp_path / name, direct)
        try:
            # the receive buffer is a bytearray's memoryview, longer than the block, starting
            # 3 bytes into it (no page alignment)
            view = memoryview(bytearray(3) + bytearray(stored) + bytearray(100))[3:][
                : len(stored)]
            if readonly:
                view = view.toreadonly()
            written = process_block(job, view, staging, which)
        finally:
            staging.close()
        results[name] = (written, staged(staging))
    assert results["native"] == results["python"]
    assert results["native"][1] == expected(raw, targets)
    assert results["native"][0].per_file[0][0] == sum(
        1 for t in targets for w in t.writes if w.file_index == 0)


@pytest.mark.parametrize("which", PATHS)
@pytest.mark.parametrize("codec", [Codec.RAW, Codec.ZSTD])
def test_a_chunk_that_differs_writes_nothing_of_its_block(tmp_path: Path, which: str,
                                                            codec: Codec) -> None:
    """Chunk 4's bytes changed (raw), or its id (either codec): the block is BlockCorrupt
    naming chunk 4, and no file got a byte, not even the chunks before it."""
    raw, targets = layout(2)
    if codec is Codec.RAW:
        job, stored = block(raw, targets, codec)
        broken = bytearray(stored)
        broken[targets[4].offset + targets[4].size // 2] ^= 0x40
        stored = bytes(broken)
    else:
        targets[4] = ChunkTarget("ab" * 32, targets[4].offset, targets[4].size, targets[4].writes)
        job, stored = block(raw, targets, codec)
    staging = staging_at(tmp_path)
    try:
        with pytest.raises(BlockCorrupt) as info:
            process_block(job, stored, staging, path_of(which))
    finally:
        staging.close()
    assert info.value.block == 3
    assert info.value.reason == f"chunk {targets[4].chunk_id[:12]} hash mismatch"
    assert staged(staging) == untouched()


@pytest.mark.parametrize("which", PATHS)
def test_a_block_that_does_not_decode_is_corrupt(tmp_path: Path, which: str) -> None:
    raw, targets = layout(3)
    job, stored = block(raw, targets, Codec.ZSTD)
    cases = {
        "truncated": (stored[: len(stored) // 2], "zstd: "),
        "garbage": (random.Random(3).randbytes(len(stored)), "zstd: "),
        "another size": (zstandard.ZstdCompressor().compress(raw + b"more"),
                         f"decoded {len(raw) + 4} bytes, expected {len(raw)}"),
    }
    staging = staging_at(tmp_path)
    try:
        for name, (bad, reason) in cases.items():
            bad_job = BlockJob(job.index, "p", 0, len(bad), len(raw), Codec.ZSTD, job.targets)
            with pytest.raises(BlockCorrupt) as info:
                process_block(bad_job, bad, staging, path_of(which))
            assert info.value.reason.startswith(reason), name
        with pytest.raises(BlockCorrupt, match=f"{len(stored) - 1} bytes, expected"):
            process_block(job, stored[:-1], staging, path_of(which))  # cut short in transit
    finally:
        staging.close()
    assert staged(staging) == untouched()


@pytest.mark.parametrize("which", PATHS)
def test_a_failed_write_is_the_engines_io_error(tmp_path: Path, which: str) -> None:
    """A staged file whose fd cannot be written (here: opened read-only) fails the block with
    IO_ERROR, as the Python path's pwritev does."""
    raw, targets = layout(4)
    job, stored = block(raw, targets, Codec.ZSTD)
    staging = staging_at(tmp_path)
    staging._fds[0] = os.open(staging.path(0), os.O_RDONLY)  # the fd every write to 0 uses
    try:
        with pytest.raises(EngineError) as info:
            process_block(job, stored, staging, path_of(which))
    finally:
        staging.close()
    assert info.value.code is ErrorCode.IO_ERROR
    assert "writing staged files" in str(info.value)


def test_a_closed_fd_is_an_os_error() -> None:
    data = b"x" * 100
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        native()(data, False, 100, array("Q", [0, 100]), blake3.blake3(data).digest(),
                 array("q", [w, -1, 0, 0]))
    assert info.value.errno == 9  # EBADF


def test_more_pieces_than_one_pwritev_takes(tmp_path: Path) -> None:
    """3000 chunks of a block that follow each other in one file: more than IOV_MAX (1024)
    pieces in one run, written in several pwritev calls."""
    data = random.Random(5).randbytes(3000 * 7)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        spans = array("Q", [n for i in range(3000) for n in (7 * i, 7)])
        ids = b"".join(blake3.blake3(data[7 * i : 7 * i + 7]).digest() for i in range(3000))
        writes = array("q", [n for i in range(3000) for n in (fd, -1, 3 + 7 * i, i)])
        assert native()(data, False, len(data), spans, ids, writes) == -1
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" * 3 + data


def test_spans_outside_the_block_or_bad_writes_are_refused(tmp_path: Path) -> None:
    process = native()
    data = b"y" * 64
    digest = blake3.blake3(data).digest()
    with pytest.raises(ValueError, match="outside"):
        process(data, False, 64, array("Q", [1, 64]), digest, array("q"))
    with pytest.raises(TypeError, match="span"):
        process(data, False, 64, array("Q", [0, 64]), digest, array("q", [1, -1, 0, 1]))
    with pytest.raises(TypeError, match="ids"):
        process(data, False, 64, array("Q", [0, 64]), digest[:31], array("q"))
    with pytest.raises(TypeError, match="offset"):  # its run's end would pass INT64_MAX
        process(data, False, 64, array("Q", [0, 64]), digest, array("q", [1, -1, 2**63 - 10, 0]))
    with pytest.raises(TypeError, match="direct fd"):
        process(data, False, 64, array("Q", [0, 64]), digest, array("q", [1, -2, 0, 0]))
    with pytest.raises(TypeError, match="quads"):  # the triples of before
        process(data, False, 64, array("Q", [0, 64]), digest, array("q", [1, 0, 0]))


def test_a_raw_block_changed_by_another_thread_is_never_written_unverified(
        tmp_path: Path) -> None:
    """The GIL is released between the hash and the write: a thread changing the caller's
    buffer meanwhile must not make a verified call write other bytes (it did: ~2% of
    calls, before raw blocks in writable buffers were copied first)."""
    process = native()
    buf = bytearray(random.Random(9).randbytes(1 << 20))
    good = bytes(buf)
    cid = blake3.blake3(good).digest()
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            buf[-1] ^= 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    wrong = verified = 0
    try:
        for _ in range(400):
            buf[-1] = good[-1]
            if process(buf, False, len(buf), array("Q", [0, len(buf)]), cid,
                       array("q", [fd, -1, 0, 0])) == -1:
                verified += 1
                wrong += blake3.blake3(os.pread(fd, len(buf), 0)).digest() != cid
    finally:
        stop.set()
        flipper.join()
        os.close(fd)
    assert verified > 0 and wrong == 0


def test_worker_threads_each_decode_their_own_blocks(tmp_path: Path) -> None:
    """Each thread keeps its own zstd context and output buffer: four threads processing blocks
    of different sizes at once stage every block's bytes."""
    process = native()
    raws = [random.Random(seed).randbytes(random.Random(-seed).randrange(1, 300_000))
            for seed in range(24)]
    staging = Staging(tmp_path, "t", Manifest("p", "1", tuple(
        FileEntry(f"f{i}.bin", len(raw), 0o644, "e3" * 32, ()) for i, raw in enumerate(raws)),
        (), {}))
    staging.prepare(list(range(len(raws))))

    def run(i: int) -> BlockWritten:
        target = ChunkTarget(blake3.blake3(raws[i]).hexdigest(), 0, len(raws[i]),
                             (ChunkWrite(i, 0),))
        job, stored = block(raws[i], [target], Codec.ZSTD, i)
        return process_block(job, stored, staging, process)

    try:
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(run, range(len(raws))))
    finally:
        staging.close()
    assert [d.written for d in done] == [len(raw) for raw in raws]
    assert [staging.path(i).read_bytes() for i in range(len(raws))] == raws


def direct_fd(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except (AttributeError, OSError):
        pytest.skip("no direct I/O on this file system")


def resident_pages(path: Path) -> list[bool]:
    """Which of the file's pages are in the page cache (mincore(2) of a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with path.open("r+b") as fh, mmap.mmap(fh.fileno(), size) as mm:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        vec = (ctypes.c_ubyte * pages)()
        try:
            assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) == 0, \
                os.strerror(ctypes.get_errno())
            return [bool(v & 1) for v in vec]
        finally:
            del address  # the buffer export must end before the mapping closes


@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 4097, 70_000])
@pytest.mark.parametrize("size", [10, 65_535, 65_536, 70_001, 300_000])
def test_direct_writes_at_every_alignment(tmp_path: Path, offset: int, size: int) -> None:
    """A run at any offset and of any length lands byte for byte, raw or zstd (decoded where
    its pages fall on page boundaries), whatever part goes through the direct fd."""
    process = native()
    path = tmp_path / "f"
    path.write_bytes(b"\xee" * (offset + size + 5000))
    raw = random.Random(offset * 7 + size).randbytes(size + 50)
    fd = os.open(path, os.O_RDWR)
    dfd = direct_fd(path)
    try:
        for stored, zstd in ((raw, False), (zstandard.ZstdCompressor().compress(raw), True)):
            # the chunk starts 50 bytes into the block: its pages are aligned in the decode
            # buffer only by the block's phase
            assert process(stored, zstd, len(raw), array("Q", [50, size]),
                           blake3.blake3(raw[50:]).digest(),
                           array("q", [fd, dfd, offset, 0])) == -1
            assert path.read_bytes() == b"\xee" * offset + raw[50:] + b"\xee" * 5000
            os.pwrite(fd, b"\xee" * size, offset)
    finally:
        os.close(fd)
        os.close(dfd)


def test_direct_writes_leave_only_partial_pages_in_the_page_cache(tmp_path: Path) -> None:
    """Two blocks write one 1 MiB run each, neither starting on a page: only the pages the
    runs share or cut (the first, the one between them, the last) went through the page
    cache; every whole page went to the disk directly (the speed this is for)."""
    process = native()
    path = tmp_path / "f"
    with path.open("wb") as fh:
        fh.truncate(3 << 20)
    raw = random.Random(11).randbytes(2 << 20)
    fd = os.open(path, os.O_RDWR)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    dfd = direct_fd(path)
    start, half = 1000, 1 << 20
    try:
        for at in (0, half):
            piece = raw[at : at + half]
            assert process(zstandard.ZstdCompressor().compress(piece), True, half,
                           array("Q", [0, half]), blake3.blake3(piece).digest(),
                           array("q", [fd, dfd, start + at, 0])) == -1
    finally:
        os.close(fd)
        os.close(dfd)
    cached = {i for i, resident in enumerate(resident_pages(path)) if resident}  # before a read
    page = mmap.PAGESIZE
    assert cached <= {start // page, (start + half) // page, (start + 2 * half) // page}, cached
    assert path.read_bytes()[start : start + 2 * half] == raw


def test_a_staged_files_direct_fd_is_closed_with_it(tmp_path: Path) -> None:
    """Blocks written through ``Staging.held`` open each file's direct fd once, beside its fd,
    and closing the staging closes both: no descriptor is left behind."""
    before = set(os.listdir("/proc/self/fd"))
    raw, targets = layout(6)
    job, stored = block(raw, targets, Codec.ZSTD)
    staging = staging_at(tmp_path)
    try:
        process_block(job, stored, staging, native())
        process_block(job, stored, staging, native())
        directs = [d for d in staging._direct.values() if d >= 0]
        if not directs:
            pytest.skip("no direct I/O on this file system")
        assert len(staging._direct) == 2  # once per file, not per block; none for the 5 B file
        assert all(os.O_DIRECT & int(Path(f"/proc/self/fdinfo/{d}").read_text().split()[3], 8)
                   for d in directs)
    finally:
        staging.close()
    assert staged(staging) == expected(raw, targets)
    assert set(os.listdir("/proc/self/fd")) == before


def test_direct_writes_are_for_big_games_unless_set() -> None:
    from engine.io.staging import DIRECT_WRITES_FROM, direct_writes_for

    assert not direct_writes_for("auto", 1 << 30)
    assert direct_writes_for("auto", DIRECT_WRITES_FROM)
    assert direct_writes_for("on", 1) and not direct_writes_for("off", 1 << 40)


def test_a_staging_without_direct_writes_opens_no_direct_fd(tmp_path: Path) -> None:
    raw, targets = layout(7)
    job, stored = block(raw, targets, Codec.ZSTD)
    staging = staging_at(tmp_path, direct=False)
    try:
        process_block(job, stored, staging, native())
        assert staging._direct == {}
    finally:
        staging.close()
    assert staged(staging) == expected(raw, targets)


def test_out_of_descriptors_costs_a_files_direct_fd_not_the_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE while opening a direct fd: that file is written through the page cache, direct
    writes stay on for the others (only a file system's refusal turns them off)."""
    raw, targets = layout(8)
    job, stored = block(raw, targets, Codec.ZSTD)
    staging = staging_at(tmp_path)
    real_open = os.open
    refused: list[str] = []

    def open_(path: object, flags: int, *args: object) -> int:
        if str(path).startswith("/proc/self/fd/") and not refused:
            refused.append(str(path))
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_)
    try:
        process_block(job, stored, staging, native())
        assert refused and staging._direct_ok
        assert sorted(d >= 0 for d in staging._direct.values()) == [False, True]
    finally:
        staging.close()
    assert staged(staging) == expected(raw, targets)


def test_the_shortest_direct_run_is_one_number_in_c_and_python() -> None:
    """staging opens no direct fd for files under DIRECT_MIN because the block processor
    writes no shorter run direct: the two must not drift apart."""
    native()
    from engine.io import _blockproc, staging

    assert _blockproc.DIRECT_MIN == staging.DIRECT_MIN


def table_manifest(seed: int) -> Manifest:
    """A decoded manifest (its chunk table in arrays) with chunks shared by files, several
    chunks per block, rows out of block order and an empty file."""
    from patcher.manifest import Block, ChunkEntry, ChunkLocation, decode_manifest, encode_manifest

    rnd = random.Random(seed)
    ids = [rnd.randbytes(32).hex() for _ in range(60)]
    blocks = tuple(Block("ab" * 32, b * 1000, 1000, 1000, Codec.RAW) for b in range(6))
    files = []
    for fi in range(5):
        picked = dict.fromkeys(rnd.sample(ids, 12) + ids[:2])
        rows = tuple(ChunkEntry(100 * j, 100, cid) for j, cid in enumerate(picked))
        files.append(FileEntry(f"f{fi}", 100 * len(rows), 0o644, "e3" * 32, rows))
    files.append(FileEntry("empty", 0, 0o644, "e3" * 32, ()))
    used = {c.id for f in files for c in f.chunks}
    locs = {cid: ChunkLocation(i % 6, 100 * (i // 6)) for i, cid in enumerate(ids) if cid in used}
    return decode_manifest(encode_manifest(Manifest("p", "1", tuple(files), blocks, locs)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_blocks_inputs_read_natively_are_those_its_spans_give(seed: int) -> None:
    """``gather`` reads a full plan's block straight from the chunk table: the very spans,
    ids, writes and per-file counts that the block's Python spans give."""
    native()
    from engine.core.planner import BlockTargets, plan_install

    plan = plan_install(table_manifest(seed))
    jobs = [job for r in plan.ranges for job in r.blocks]
    assert jobs and all(isinstance(job.targets, BlockTargets) for job in jobs)
    for job in jobs:
        got = blockio.native_inputs(job)
        assert got == blockio.native_inputs(job.materialized())  # from its spans, in Python
        _, ids, writes, per_file = got
        assert ids == b"".join(bytes.fromhex(t.chunk_id) for t in job.targets)
        assert sum(n for n, _ in per_file.values()) * 24 == len(writes)


def test_bad_table_columns_or_fds_are_refused_not_read() -> None:
    """Indices the table's arrays do not hold are an IndexError, arrays of another kind a
    TypeError, a file without fds a KeyError: nothing is read out of bounds."""
    native()
    from engine.io._blockproc import bind, gather

    ids, u32 = bytes(64), (lambda *v: array("I", v))
    good = (ids, u32(0, 5), u32(10, 20), u32(0, 1, 2), u32(0, 1), u32(0, 3), array("Q", [0, 7]),
            u32(1, 0), 0, 2)
    spans, _, writes, per_file = gather(*good)
    assert array("Q", spans).tolist() == [5, 20, 0, 10]
    assert per_file == {3: (1, 20), 0: (1, 10)}
    assert array("q", bind(writes, {0: (9, -1), 3: (8, 4)})).tolist() == [8, 4, 7, 0, 9, -1, 0, 1]

    def but(at: int, value: object) -> tuple[object, ...]:
        return tuple(value if i == at else v for i, v in enumerate(good))

    bad_cases = [
        (but(7, u32(2, 0)), IndexError),  # a chunk past the table
        ((*good[:8], 0, 3), IndexError),  # a slice past the order
        ((*good[:8], 2, 1), IndexError),
        (but(3, u32(0, 1, 5)), IndexError),  # rows past the rows array
        (but(4, u32(0, 9)), IndexError),  # a row past the row arrays
        (but(0, bytes(40)), IndexError),  # ids shorter than the chunks
        (but(1, array("i", [0, 5])), TypeError),  # signed
        (but(1, bytes(8)), TypeError),  # bytes, not an integer array
        (but(3, u32(0, 2, 1)), IndexError),  # a chunk's rows end before they start
        (but(5, array("Q", [0, 1 << 63])), IndexError),  # a file index past int64
    ]
    for args, error in bad_cases:
        with pytest.raises(error):
            gather(*args)
    with pytest.raises(KeyError):
        bind(writes, {0: (9, -1)})
    with pytest.raises(TypeError):
        bind(writes, {0: (9, -1), 3: 8})

    class Index:  # an int-like whose conversion could change the dict under the call
        def __index__(self) -> int:
            fds.clear()
            return 8

    fds: dict[int, tuple[object, object]] = {0: (9, -1), 3: (Index(), 4)}
    with pytest.raises(TypeError):
        bind(writes, fds)  # type: ignore[arg-type]
    # arrays that are not aligned for their items (a sliced view) are read as well
    unaligned = [memoryview(bytearray(1) + bytes(a))[1:].cast(a.typecode)
                 for a in (u32(0, 5), u32(10, 20))]
    assert gather(good[0], *unaligned, *good[3:])[0] == spans
    with pytest.raises(TypeError):
        bind(writes[:-1], {0: (9, -1), 3: (8, 4)})


def test_threads_opening_one_staged_file_at_once_share_one_fd_and_leak_none(
        tmp_path: Path) -> None:
    """A staged file is opened outside the staging's lock (an open can wait on the folder):
    threads that open it at the same moment keep one fd between them, close the others, and
    every fd is closed with the staging."""
    def open_fds() -> set[str]:
        return {os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{n}")}

    staging = staging_at(tmp_path, direct=False)
    before = open_fds()
    start = threading.Barrier(8)
    seen: list[int] = []

    def write(k: int) -> None:
        start.wait()
        for i in range(20):
            with staging.held({0: (1, 1), 1: (1, 1)}) as fds:
                seen.append(fds[0][0])
                os.pwrite(fds[0][0], bytes([k]), 8 * i + k)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    assert len(set(seen)) == 1
    staged_paths = {str(staging.path(i)) for i in range(len(FILE_SIZES))}
    assert len((open_fds() - before) & staged_paths) == 2
    staging.close()
    assert not (open_fds() - before) & staged_paths
    data = staging.path(0).read_bytes()
    assert all(data[8 * i + k] == k for i in range(20) for k in range(8))
