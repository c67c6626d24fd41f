"""The publisher: a build folder becomes a released, signed version in the content store.

Steps: scan (refuse symlinks, unsafe names and the launcher's reserved ``.launcher-*`` names) →
chunk and hash files in parallel → append the chunks the product does not have yet to packs as
compressed blocks → sign the manifest → build per-file binary patches from the previous versions.
Publishing the same build again stores nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import mmap
import os
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3

from patcher.chunking import CHUNK_MAX, ChunkedFile, ChunkRef, chunk_file, chunk_refs
from patcher.deltaindex import EMPTY_SHA256, DeltaIndex, ManifestPatch, PatchEntry, encode_delta_index
from patcher.diff import diff_manifests
from patcher.errors import DeltaError, ManifestError, PublishError
from patcher.manifest import (
    Block,
    ChunkEntry,
    ChunkLocation,
    Codec,
    FileEntry,
    LaunchEntry,
    Manifest,
    SaveLocation,
    check_collisions,
    check_id,
    check_relative_path,
    compress_manifest_json,
    manifest_to_json,
    parse_launch,
    parse_saves,
)
from patcher.packs import (
    BLOCK_TARGET_RAW,
    OWN_BLOCKS_MIN,
    RESTORE_LIVE_MIN,
    PackWriter,
    StoredBlock,
    compress_block,
)
from patcher.signing import sign_manifest
from patcher.sizing import install_bytes
from patcher.store import BlockReader, ChunkRecord, Store, atomic_write

log = logging.getLogger(__name__)

BUILD_METADATA = "launcher-build.json"
# Any level below patcher.packs.STRONG_LEVEL selects the default rule (patcher.packs.
# compress_block): blocks that look compressible get one pass with STRONG_PARAMS, but for the
# middling ones, and the rest level 1 (a fresh install within 1.02x of per-file zstd -19 on the
# demo catalog). Release pipelines with time to spare can pass a higher level (7 and up: that
# level for every compressible block).
DEFAULT_LEVEL = 3
DEFAULT_PATCH_LEVEL = 19


@dataclass(frozen=True, slots=True)
class PatchReport:
    from_version: str
    path: str
    method: str
    size: int
    alternative_bytes: int


@dataclass(frozen=True, slots=True)
class PublishReport:
    product_id: str
    version_id: str
    already_published: bool
    files: int
    total_bytes: int
    chunks: int
    new_chunks: int
    reused_chunks: int
    stored_bytes: int  # bytes appended to packs by this publish
    install_bytes: int  # what a fresh install downloads
    publish_seconds: float  # scan, chunk, hash, compress, pack, sign
    patch_seconds: float
    patches: tuple[PatchReport, ...] = field(default=())
    restored_chunks: int = 0  # stored again, out of mostly dead blocks (in stored_bytes)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "patches"}
        d["patches"] = [dataclasses.asdict(p) for p in self.patches]
        d["patch_bytes"] = sum(p.size for p in self.patches)
        return d


@dataclass(frozen=True, slots=True)
class BuildFile:
    path: str
    source: Path
    mode: int
    # (size, mtime_ns, ctime_ns, inode) when the build was scanned, before any byte was read:
    # see check_unchanged
    stamp: tuple[int, int, int, int] = (0, 0, 0, 0)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def check_unchanged(scan: BuildScan) -> None:
    """BUILD_CHANGED when any file of the build is not what was scanned. A file is read several
    times over (its digest, its chunks, its SHA-256 on the pool, its blocks' bytes when they
    are compressed), so a write in between could pair one read's chunks with another's hash and
    publish a manifest no install could pass. Any write moves ctime, so one stat per file after
    the last read (and before the manifest is written) proves that every read saw the bytes
    that were scanned."""
    for bf in scan.files:
        try:
            now = _stamp(bf.source.lstat())
        except OSError as exc:
            raise PublishError(f"{bf.path} changed while it was published (it is gone: "
                               f"{exc.strerror}); publish it again", code="BUILD_CHANGED") from exc
        if now != bf.stamp:
            raise PublishError(f"{bf.path} changed while it was published; publish it again",
                               code="BUILD_CHANGED")


@dataclass(frozen=True, slots=True)
class BuildScan:
    files: tuple[BuildFile, ...]
    dirs: tuple[str, ...]
    launch: tuple[LaunchEntry, ...]
    saves: tuple[SaveLocation, ...]


# ---------------------------------------------------------------------------------------------
# Scan


def scan_build(build_dir: Path) -> BuildScan:
    if not build_dir.is_dir():
        raise PublishError(f"build folder {build_dir} does not exist", code="BUILD_NOT_FOUND")
    files: list[BuildFile] = []
    dirs: list[str] = []
    for root, dirnames, filenames in os.walk(build_dir):
        dirnames.sort()
        rel_root = Path(root).relative_to(build_dir)
        for name in sorted(filenames) + [d for d in dirnames if (Path(root) / d).is_symlink()]:
            src = Path(root) / name
            rel = (rel_root / name).as_posix()
            if rel == BUILD_METADATA:
                continue
            st = src.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise PublishError(f"{rel}: symbolic links are not published", code="BUILD_SYMLINK")
            if not stat.S_ISREG(st.st_mode):
                raise PublishError(f"{rel}: not a regular file", code="BUILD_SPECIAL_FILE")
            files.append(BuildFile(_checked(rel), src, 0o755 if st.st_mode & 0o111 else 0o644,
                                   _stamp(st)))
        if not filenames and not dirnames and rel_root != Path("."):
            dirs.append(_checked(rel_root.as_posix()))
    launch, saves = _read_metadata(build_dir / BUILD_METADATA)
    _check_names(files, dirs)
    return BuildScan(tuple(files), tuple(dirs), launch, saves)


def _checked(rel: str) -> str:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PublishError(f"unpublishable path: {rel!r} is not valid UTF-8",
                           code="BUILD_PATH_INVALID") from exc
    try:
        return check_relative_path(rel, rel)
    except ManifestError as exc:
        raise PublishError(f"unpublishable path: {exc}", code="BUILD_PATH_INVALID") from exc


def _read_metadata(path: Path) -> tuple[tuple[LaunchEntry, ...], tuple[SaveLocation, ...]]:
    """launcher-build.json, checked by the manifest loader's own rules before anything is stored."""
    if not path.exists() and not path.is_symlink():
        return (), ()
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        launch = [dict({"arguments": [], "working_dir": ""}, **e) if isinstance(e, dict) else e
                  for e in doc.get("launch", [])]
        saves = [dict({"include": ["*"], "exclude": []}, **e) if isinstance(e, dict) else e
                 for e in doc.get("saves", [])]
        return parse_launch(launch), parse_saves(saves)
    except ManifestError as exc:
        code = "BUILD_PATH_INVALID" if exc.code == "MANIFEST_PATH_INVALID" else "BUILD_METADATA_INVALID"
        raise PublishError(f"{BUILD_METADATA}: {exc}", code=code) from exc
    except (OSError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise PublishError(f"{BUILD_METADATA}: {exc!r}", code="BUILD_METADATA_INVALID") from exc


def _check_names(files: list[BuildFile], dirs: list[str]) -> None:
    """Names that collide on case-insensitive filesystems are refused before anything is stored."""
    entries = tuple(FileEntry(f.path, 0, f.mode, "0" * 64, ()) for f in files)
    try:
        check_collisions(entries, tuple(dirs))
    except ManifestError as exc:
        raise PublishError(f"unpublishable names: {exc}", code="BUILD_PATH_COLLISION") from exc


# ---------------------------------------------------------------------------------------------
# Blocks


@dataclass(slots=True)
class _PendingBlock:
    chunk_ids: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    # where its bytes are: (file, start, end), adjacent chunks of a file as one range (an
    # all-new file's block is one read); read by the thread that compresses the block
    ranges: list[tuple[Path, int, int]] = field(default_factory=list)
    raw_size: int = 0

    def read(self) -> bytes:
        """The block's raw bytes."""
        buf = bytearray(self.raw_size)
        self.read_into(buf)
        return bytes(buf)

    def read_into(self, buf: bytearray) -> None:
        """Read the block's raw bytes into the start of ``buf`` (a file read releases the GIL;
        the publishing thread never copies them)."""
        with memoryview(buf) as view:
            pos = 0
            for path, start, end in self.ranges:
                with path.open("rb", buffering=0) as fh:
                    fh.seek(start)
                    while start < end:
                        n = fh.readinto(view[pos : pos + end - start])
                        if not n:  # cut short after it was chunked
                            raise PublishError(f"{path} changed while it was published",
                                               code="BUILD_CHANGED")
                        pos, start = pos + n, start + n


def mostly_dead_chunks(chunked: list[ChunkedFile], known: dict[str, ChunkRecord],
                       live_min: float) -> set[str]:
    """Known chunks this version needs that sit in stored blocks of which less than
    ``live_min`` (of the raw bytes) is needed by this version: a fresh install would fetch the
    rest of such a block for nothing (pure)."""
    sizes: dict[str, int] = {}
    for cf in chunked:
        for c in cf.chunks:
            if c.id in known:
                sizes[c.id] = c.size
    live: dict[tuple[str, int], int] = {}
    raw: dict[tuple[str, int], int] = {}
    for cid, size in sizes.items():
        r = known[cid]
        key = (r.pack, r.block_offset)
        live[key] = live.get(key, 0) + size
        raw[key] = r.raw_size
    sparse = {key for key, n in live.items() if n < live_min * raw[key]}
    return {cid for cid in sizes if (known[cid].pack, known[cid].block_offset) in sparse}


class _Grouper:
    """Groups chunks not in ``seen``, in file order, into blocks of about BLOCK_TARGET_RAW, fed
    one file at a time (the rules ``patcher.updatedoc`` replays: keep them in step)."""

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen
        self.block = _PendingBlock()

    def add_file(self, path: Path, cf: ChunkedFile) -> list[_PendingBlock]:
        """The blocks this file completes."""
        fresh = [c for c in cf.chunks if c.id not in self.seen]
        if not fresh:
            return []
        done: list[_PendingBlock] = []
        # A file with a sizeable amount of new data gets blocks of its own, so an update that
        # patches it instead does not still have to fetch a block shared with other files.
        own_blocks = sum(c.size for c in fresh) >= OWN_BLOCKS_MIN
        if own_blocks and self.block.chunk_ids:
            done.append(self._close())
        block = self.block
        for c in fresh:
            if c.id in self.seen:
                continue
            self.seen.add(c.id)
            block.chunk_ids.append(c.id)
            block.offsets.append(block.raw_size)
            block.sizes.append(c.size)
            last = block.ranges[-1] if block.ranges else None
            if last is not None and last[2] == c.offset and last[0] == path:
                block.ranges[-1] = (path, last[1], c.offset + c.size)
            else:
                block.ranges.append((path, c.offset, c.offset + c.size))
            block.raw_size += c.size
            if block.raw_size >= BLOCK_TARGET_RAW:
                done.append(self._close())
                block = self.block
        if own_blocks and block.chunk_ids:
            done.append(self._close())
        return done

    def finish(self) -> list[_PendingBlock]:
        return [self._close()] if self.block.chunk_ids else []

    def _close(self) -> _PendingBlock:
        block, self.block = self.block, _PendingBlock()
        return block


def _group_blocks(
    scan: BuildScan, chunked: list[ChunkedFile], seen: set[str]
) -> Iterator[_PendingBlock]:
    grouper = _Grouper(seen)
    for bf, cf in zip(scan.files, chunked, strict=True):
        yield from grouper.add_file(bf.source, cf)
    yield from grouper.finish()


def _file_digest(path: Path) -> str:
    """The file's BLAKE3, read through a map (it releases the GIL while hashing it; ~10% less
    CPU than through a read buffer)."""
    with path.open("rb") as fh:
        if fh.seek(0, 2) == 0:
            return str(blake3.blake3(b"").hexdigest())
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return str(blake3.blake3(mm).hexdigest())


# Blocks are read into a buffer of at least this size (one per pool thread, reused): a block
# ends at the chunk that reaches BLOCK_TARGET_RAW.
BLOCK_BUFFER = BLOCK_TARGET_RAW + CHUNK_MAX
# Read buffer of the SHA-256 (one per pool thread, reused): OpenSSL hashes a buffer that was
# just read, in cache, 1.4x faster than the same bytes through a map (star-courier 1.0.0:
# 0.22 against 0.32 CPU s; SHA-NI, page cache warm).
SHA_BUFFER = 1024 * 1024
_local = threading.local()


EMPTY_BLAKE3 = blake3.blake3(b"").hexdigest()


def _file_hashes(path: Path, with_blake3: bool) -> tuple[str, str | None]:
    """The file's SHA-256 and, when asked, its BLAKE3 from the same reads (star-courier 1.0.0:
    0.29 CPU s for both, against 0.30-0.40 for a BLAKE3 pass through a map and this one)."""
    buf: bytearray | None = getattr(_local, "sha_buffer", None)
    if buf is None:
        buf = _local.sha_buffer = bytearray(SHA_BUFFER)
    sha = hashlib.sha256()
    whole = blake3.blake3() if with_blake3 else None
    with path.open("rb", buffering=0) as fh, memoryview(buf) as view:
        while n := fh.readinto(view):
            if whole is not None:
                whole.update(view[:n])
            sha.update(view[:n])
    return sha.hexdigest(), whole.hexdigest() if whole is not None else None


def _sha256_file(path: Path) -> str:
    return _file_hashes(path, False)[0]


def _chunk_files(
    store: Store, product: str, scan: BuildScan, pool: ThreadPoolExecutor,
    previous: Manifest | None,
) -> tuple[list[ChunkedFile], list[str]]:
    """Every file's chunks and SHA-256, and its BLAKE3 (a republish's check; ``_Ingest``
    does the same while it stores)."""
    digests = list(pool.map(lambda bf: _file_digest(bf.source), scan.files))
    reuse = _reusable_rows(store, product, previous, digests)
    return [reuse.get(d) or chunk_file(bf.source) for bf, d in zip(scan.files, digests, strict=True)], digests


def _reusable_rows(store: Store, product: str, previous: Manifest | None,
                   digests: list[str]) -> dict[str, ChunkedFile]:
    """BLAKE3 of a file -> its chunk rows, for files the previous version holds with the same
    content (by BLAKE3, ~2 GB/s, recorded at each publish): chunking and SHA-256 (FastCDC holds
    the GIL, ~0.55 s per 331 MB) are paid only for files that changed."""
    return _RowReuse(store, product, previous).rows(digests)


class _RowReuse:
    def __init__(self, store: Store, product: str, previous: Manifest | None) -> None:
        self.store = store
        self.product = product
        self.by_sha = {f.hash_sha256: f for f in previous.files} if previous is not None else None

    def rows(self, digests: list[str]) -> dict[str, ChunkedFile]:
        if self.by_sha is None:
            return {}
        out: dict[str, ChunkedFile] = {}
        for digest, (size, sha) in self.store.known_files(self.product, digests).items():
            prev = self.by_sha.get(sha)
            if prev is not None and prev.size == size:
                out[digest] = ChunkedFile(prev.size, prev.hash_sha256, tuple(
                    ChunkRef(c.offset, c.size, c.id) for c in prev.chunks))
        return out


def _map_populated(fd: int) -> mmap.mmap:
    """A read-only map of the whole file with its pages mapped by the mmap call (Linux
    MAP_POPULATE, without the GIL) rather than faulted in one by one while FastCDC holds it."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if os.name == "nt" or not populate:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)


# Raw bytes of blocks handed to the compressing threads and not yet written to a pack: enough
# for them to keep busy while the publishing thread chunks the next large file (FastCDC holds
# the GIL: ~0.2 s for a 100 MB pack). A queued block is only file ranges: bytes are held by the
# blocks being compressed and the compressed ones waiting for the pack writer, within this bound.
INFLIGHT_RAW = 48 * 1024 * 1024


def _read_and_compress(pb: _PendingBlock, level: int) -> tuple[bytes, Codec]:
    """Read a block into this thread's buffer and compress it. The buffer is reused: on this VM
    the first touch of fresh memory costs more wall time than the copy (a fresh 1 MiB bytes
    per block: 0.40-0.44 s wall to read star-courier 1.0.0, against 0.10-0.13 s into one
    buffer)."""
    buf: bytearray | None = getattr(_local, "block_buffer", None)
    if buf is None or len(buf) < pb.raw_size:
        buf = _local.block_buffer = bytearray(max(pb.raw_size, BLOCK_BUFFER))
    pb.read_into(buf)
    with memoryview(buf) as view, view[: pb.raw_size] as raw:
        return compress_block(raw, level)


class _Ingest:
    """Chunking, hashing, compressing and pack writing in one pipeline. The publishing thread
    chunks the files in order (FastCDC holds the GIL) and groups their new chunks into blocks,
    and does nothing else; the pool reads and compresses blocks and hashes whole files meanwhile
    (pread, zstd, SHA-256 release the GIL); one more thread appends the compressed blocks to
    packs in block order, so the packs are the same bytes whatever the timing."""

    def __init__(self, store: Store, product: str, pool: ThreadPoolExecutor, level: int) -> None:
        self.pool = pool
        self.level = level
        self.writer = PackWriter(store.path(f"{product}/packs"))
        self.write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="packs")
        self.placed: list[tuple[_PendingBlock, StoredBlock]] = []
        self.inflight: deque[tuple[_PendingBlock, Future[StoredBlock]]] = deque()
        self.inflight_raw = 0

    def submit(self, blocks: Iterable[_PendingBlock]) -> None:
        for pb in blocks:
            compressed = self.pool.submit(_read_and_compress, pb, self.level)
            self.inflight.append((pb, self.write_pool.submit(self._write, pb, compressed)))
            self.inflight_raw += pb.raw_size
            while self.inflight_raw > INFLIGHT_RAW:
                self._drain_one()

    def _write(self, pb: _PendingBlock, compressed: Future[tuple[bytes, Codec]]) -> StoredBlock:
        data, codec = compressed.result()
        return self.writer.append(data, pb.raw_size, codec)

    def _drain_one(self) -> None:
        pb, written = self.inflight.popleft()
        self.placed.append((pb, written.result()))
        self.inflight_raw -= pb.raw_size

    def close(self) -> tuple[list[ChunkRecord], int]:
        while self.inflight:
            self._drain_one()
        self.write_pool.shutdown()
        names = self.writer.close()
        records: list[ChunkRecord] = []
        stored = 0
        for pb, sb in self.placed:
            stored += sb.stored_size
            for cid, off, size in zip(pb.chunk_ids, pb.offsets, pb.sizes, strict=True):
                records.append(
                    ChunkRecord(cid, names[sb.pack_slot], sb.offset, sb.stored_size, sb.raw_size,
                                sb.codec, off, size)
                )
        return records, stored

    def abort(self) -> None:
        """Nothing of this publish may still run once its unsealed pack is gone."""
        for _, fut in self.inflight:
            fut.cancel()
        self.write_pool.shutdown(wait=True, cancel_futures=True)
        self.writer.abort()


class _PriorRecords:
    """Chunk records of the chunks the previous version holds, read from its manifest: the
    chunk index (SQLite, ~20 us a chunk on the chunking thread, 0.06-0.1 s a version) is asked
    only about the others. The same records: the previous version is the last one published,
    and a publish moves a chunk's record (re-stored out of a mostly dead block) only to the
    place its own manifest names (``publish``)."""

    def __init__(self, previous: Manifest | None) -> None:
        self.previous = previous

    def records(self, chunks: Iterable[ChunkRef]) -> dict[str, ChunkRecord]:
        out: dict[str, ChunkRecord] = {}
        m = self.previous
        if m is None:
            return out
        for c in chunks:
            loc = m.chunks.get(c.id)
            if loc is not None:
                b = m.blocks[loc.block]
                out[c.id] = ChunkRecord(c.id, b.pack, b.offset, b.stored_size, b.raw_size,
                                        b.codec, loc.offset, c.size)
        return out


@dataclass(frozen=True, slots=True)
class _Stored:
    chunked: list[ChunkedFile]
    digests: list[str]
    known: dict[str, ChunkRecord]  # chunks stored before this publish
    records: list[ChunkRecord]  # chunks stored by it (new, then re-stored)
    stored: int
    restore: set[str]


def _store_build(
    store: Store, product: str, scan: BuildScan, pool: ThreadPoolExecutor,
    previous: Manifest | None, level: int,
) -> _Stored:
    """Chunk every file (or take its rows from the previous version), store the chunks the
    product lacks as compressed blocks, then re-store the needed chunks of mostly dead blocks."""
    # A file's BLAKE3 ahead of the chunking thread (which takes them in order) where it may find
    # the file's rows: only a file of the size of one of the previous version's files can reuse
    # them (_RowReuse). The others' BLAKE3 is computed with their SHA-256, in the same read
    # (every file of a first version; most changed files).
    sizes = {f.size for f in previous.files} if previous is not None else set()
    digesting = [pool.submit(_file_digest, bf.source) if bf.stamp[0] in sizes else None
                 for bf in scan.files]
    reuse = _RowReuse(store, product, previous)
    prior = _PriorRecords(previous)
    ingest = _Ingest(store, product, pool, level)
    grouper = _Grouper(set())
    known: dict[str, ChunkRecord] = {}
    chunked: list[ChunkedFile] = []
    digests: list[str] = []
    shas: dict[int, Future[tuple[str, str | None]]] = {}
    try:
        for i, bf in enumerate(scan.files):
            ahead = digesting[i]
            cf = None
            if ahead is not None:
                digests.append(ahead.result())
                cf = reuse.rows(digests[-1:]).get(digests[-1])
            if cf is None:
                with bf.source.open("rb") as fh:
                    size = fh.seek(0, 2)
                    if size == 0:
                        cf = ChunkedFile(0, EMPTY_SHA256, ())
                    else:
                        shas[i] = pool.submit(_file_hashes, bf.source, ahead is None)
                        with _map_populated(fh.fileno()) as mm:
                            cf = ChunkedFile(size, "", chunk_refs(mm))
                if ahead is None:
                    digests.append(EMPTY_BLAKE3 if size == 0 else "")  # set with its SHA-256
            found = prior.records([c for c in cf.chunks if c.id not in grouper.seen])
            ids = [c.id for c in cf.chunks if c.id not in grouper.seen and c.id not in found]
            if ids:
                found.update(store.lookup_chunks(product, ids))
            known.update(found)
            grouper.seen.update(found)
            chunked.append(cf)
            ingest.submit(grouper.add_file(bf.source, cf))
        ingest.submit(grouper.finish())
        for i, fut in shas.items():
            sha, digest = fut.result()
            chunked[i] = dataclasses.replace(chunked[i], sha256=sha)
            if digest is not None:
                digests[i] = digest
        # chunks of older blocks this version needs little of: stored again, after the new ones
        restore = mostly_dead_chunks(chunked, known, RESTORE_LIVE_MIN)
        if restore:
            stored_elsewhere = {c.id for cf in chunked for c in cf.chunks} - restore
            ingest.submit(_group_blocks(scan, chunked, stored_elsewhere))
        records, stored = ingest.close()
    except BaseException:
        for pending in digesting:
            if pending is not None:
                pending.cancel()
        ingest.abort()
        raise
    return _Stored(chunked, digests, known, records, stored, restore)


# ---------------------------------------------------------------------------------------------
# Manifest


def _build_manifest(
    product: str, version: str, scan: BuildScan, chunked: list[ChunkedFile],
    records: dict[str, ChunkRecord], previous: Manifest | None = None,
) -> Manifest:
    # Blocks the previous version used keep their relative order and new blocks go last, so a
    # small update renumbers few blocks and the manifest patch against the installed manifest
    # stays small (first-use order shifted every later chunk's block index: measured 5.8 kB of
    # patch for a 4-file hotfix).
    rank: dict[tuple[str, int], int] = {}
    if previous is not None:
        rank = {(b.pack, b.offset): i for i, b in enumerate(previous.blocks)}
    used: dict[tuple[str, int], Block] = {}
    order: list[tuple[str, int]] = []
    for cf in chunked:
        for c in cf.chunks:
            r = records[c.id]
            key = (r.pack, r.block_offset)
            if key not in used:
                used[key] = Block(r.pack, r.block_offset, r.stored_size, r.raw_size, r.codec)
                order.append(key)
    first_use = {key: i for i, key in enumerate(order)}
    order.sort(key=lambda k: (0, rank[k]) if k in rank else (1, first_use[k]))
    block_index = {key: i for i, key in enumerate(order)}
    blocks = [used[key] for key in order]
    locations: dict[str, ChunkLocation] = {}
    files: list[FileEntry] = []
    for bf, cf in zip(scan.files, chunked, strict=True):
        for c in cf.chunks:
            if c.id in locations:
                continue
            r = records[c.id]
            locations[c.id] = ChunkLocation(block_index[(r.pack, r.block_offset)], r.offset_in_block)
        files.append(
            FileEntry(bf.path, cf.size, bf.mode, cf.sha256,
                      tuple(ChunkEntry(c.offset, c.size, c.id) for c in cf.chunks))
        )
    return Manifest(
        product_id=product,
        version_id=version,
        files=tuple(files),
        blocks=tuple(blocks),
        chunks=locations,
        dirs=scan.dirs,
        launch=scan.launch,
        saves=scan.saves,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _same_content(a: Manifest, b: Manifest) -> bool:
    def key(m: Manifest) -> object:
        return ([(f.path, f.hash_sha256, f.mode) for f in m.files], m.dirs, m.launch, m.saves)

    return key(a) == key(b)


# ---------------------------------------------------------------------------------------------
# Patches


def _build_step_patches(
    store: Store, old: Manifest, new: Manifest, scan: BuildScan, workdir: Path, *,
    workers: int, memory_limit: int, level: int,
) -> tuple[DeltaIndex, list[PatchReport]]:
    from patcher import delta as deltas  # bsdiff and process pools only when patching

    diff = diff_manifests(old, new)
    sources = {f.path: f for f in scan.files}
    old_by_name: dict[str, str] = {}
    for f in old.files:
        old_by_name.setdefault(f.path.rsplit("/", 1)[-1], f.path)
    reader = BlockReader(store, old)
    jobs: list[deltas.PatchJob] = []
    job_meta: dict[str, tuple[str | None, str, int]] = {}
    for path in diff.rebuilt:
        target = new.file(path)
        assert target is not None
        source_path = path if old.file(path) is not None else old_by_name.get(path.rsplit("/", 1)[-1])
        if target.size == 0:
            continue
        # Every changed file gets a patch, however small its chunks: a patch of a few bytes can
        # free a block shared with other files (the chooser decides), and costs microseconds.
        # The bar is the stored size of the blocks holding its new chunks, not its share of
        # them: several small files sharing one block free it only together (measured: four
        # new 1 kB scripts kept an 8 kB block needed for a 37-byte patch's file).
        blocks = {new.chunks[c.id].block for c in target.chunks if c.id in diff.download}
        budget = sum(new.blocks[b].stored_size for b in blocks)
        if budget <= 0:  # every chunk is already local
            continue
        old_copy: Path | None = None
        spans: tuple[deltas.Span, ...] = ()
        if source_path is not None:
            old_copy = workdir / f"{len(jobs)}.old"
            reader.extract(source_path, old_copy)
            src = old.file(source_path)
            assert src is not None
            # what both files hold, by chunk id: only the rest is diffed (patcher.delta)
            spans = deltas.matching_spans(((c.offset, c.size, c.id) for c in src.chunks),
                                          ((c.offset, c.size, c.id) for c in target.chunks))
        jobs.append(deltas.PatchJob(path, old_copy, sources[path].source, budget, spans))
        job_meta[path] = (source_path, target.hash_sha256, budget)
    results = deltas.build_patches(jobs, workers=workers, memory_limit=memory_limit, level=level)
    entries: list[PatchEntry] = []
    reports: list[PatchReport] = []
    for res in results:
        if res.method is None or res.data is None:
            continue
        source_path, to_sha, budget = job_meta[res.key]
        src = old.file(source_path) if source_path is not None else None
        target = new.file(res.key)
        assert target is not None
        patch_id = blake3.blake3(res.data).hexdigest()
        dest = store.path(store.patch_rel(new.product_id, patch_id))
        if not dest.exists():
            atomic_write(dest, res.data)
        entries.append(
            PatchEntry(res.key, source_path, src.hash_sha256 if src is not None else EMPTY_SHA256,
                       to_sha, target.size, res.method.value, patch_id, len(res.data))
        )
        reports.append(PatchReport(old.version_id, res.key, res.method.value, len(res.data),
                                   int(budget)))
    manifest_patch = _manifest_patch(store, old, new)
    return DeltaIndex(new.product_id, old.version_id, new.version_id, tuple(entries),
                      manifest_patch), reports


def _manifest_patch(store: Store, old: Manifest, new: Manifest) -> ManifestPatch | None:
    """The new manifest's JSON as a zstd patch against the old one's, stored like file patches.

    The engine rebuilds the exact signed bytes (``compress_manifest_json`` of the patched JSON)
    and checks the new manifest's own signature over them, so the patch needs no signature of
    its own; its id in the signed index only lets the engine reject wrong bytes early."""
    from patcher import delta as deltas

    old_json, new_json = manifest_to_json(old), manifest_to_json(new)
    data = deltas.build_zstd(old_json, new_json, DEFAULT_PATCH_LEVEL)
    blob = store.path(store.manifest_rel(new.product_id, new.version_id)).read_bytes()
    if len(data) >= len(blob) or compress_manifest_json(new_json) != blob:
        return None  # no saving, or the engine could not rebuild the signed bytes
    patch_id = blake3.blake3(data).hexdigest()
    dest = store.path(store.patch_rel(new.product_id, patch_id))
    if not dest.exists():
        atomic_write(dest, data)
    return ManifestPatch("zstd", patch_id, len(data), len(new_json))


# documents tried per step when looking for small patches worth carrying for their rows alone
DOC_TRIALS = 48


def _update_doc(store: Store, old: Manifest, new: Manifest, index: DeltaIndex) -> bytes | None:
    """The step's format-3 update document, or None when the engine could not rebuild the
    signed manifest from it.

    Its patches: those the client's chooser takes from the format-2 index, then, one by one
    (smallest first), small patches of files built from chunks anyway when carrying the patch
    costs less than shipping the file's row in the manifest delta (a 25-byte patch of a text
    file against ~100 bytes of hashes)."""
    from patcher.sizing import choose_patches, doc_update_cost
    from patcher.updatedoc import (
        MAX_DERIVED_OUTPUT,
        UpdateDoc,
        apply_manifest_delta,
        build_manifest_delta,
        check_doc_work,
        decode_update_doc,
        derived_entry,
        doc_patch,
        encode_update_doc,
        file_layout,
        new_blocks_info,
        predicted_json,
    )

    blob = store.path(store.manifest_rel(new.product_id, new.version_id)).read_bytes()
    new_json = manifest_to_json(new)
    if compress_manifest_json(new_json) != blob:
        return None
    diff = diff_manifests(old, new)
    layout = file_layout(old, new)
    usable = [p for p in index.patches if p.to_size <= MAX_DERIVED_OUTPUT]
    order = {f.path: i for i, f in enumerate(new.files)}
    usable.sort(key=lambda p: order[p.path])
    data: dict[str, bytes] = {}

    def derived(paths: set[str]) -> list[FileEntry]:
        out = []
        for p in usable:
            if p.path in paths:
                f = new.file(p.path)
                assert f is not None
                out.append(derived_entry(f.path, f.size, f.hash_sha256,
                                         [(c.offset, c.size, c.id) for c in f.chunks], old,
                                         p.source_path))
        return out

    def build(paths: set[str]) -> tuple[int, bytes] | None:
        """(download cost, encoded document), or None when the engine would refuse it."""
        entries = [p for p in usable if p.path in paths]
        for p in entries:
            if p.patch_id not in data:
                data[p.patch_id] = store.path(store.patch_rel(new.product_id, p.patch_id)).read_bytes()
        rows = derived(paths)
        blocks = new_blocks_info(old, new, rows, layout)
        doc = UpdateDoc(tuple(doc_patch(p, data[p.patch_id]) for p in entries), b"", blocks,
                        layout)
        try:  # the engine's work budget, checked before its prediction is built (cheap)
            check_doc_work(doc, old)
        except DeltaError:
            return None
        predicted = predicted_json(old, new.version_id, rows, blocks, layout)
        doc = dataclasses.replace(doc, manifest_delta=build_manifest_delta(predicted, new_json))
        encoded = encode_update_doc(doc, old)
        return doc_update_cost(old, new, doc, len(encoded), diff)[0], encoded

    chosen = set(choose_patches(old, new, diff, index))
    first = build(chosen)
    if first is None:
        return None  # the engine would refuse it: it takes the signed format-2 index instead
    best, encoded = first
    extra = sorted((p for p in usable if p.path not in chosen), key=lambda p: p.patch_size)
    for p in extra[:DOC_TRIALS]:
        trial = build(chosen | {p.path})
        if trial is not None and trial[0] < best:
            (best, encoded), chosen = trial, chosen | {p.path}
    # the engine's side of it, here: every byte of the result must be the signed bytes, and
    # the document within the engine's work budget (never publish one it would refuse)
    doc = decode_update_doc(encoded, old)
    try:
        check_doc_work(doc, old)
    except DeltaError:
        return None
    rows = derived({p.path for p in doc.patches})
    rebuilt = apply_manifest_delta(predicted_json(old, new.version_id, rows, doc.blocks,
                                                  doc.layout), doc.manifest_delta)
    if compress_manifest_json(rebuilt) != blob:
        return None
    return encoded


def build_patches_for(
    store: Store, new: Manifest, scan: BuildScan, *, previous: int, workers: int,
    memory_limit: int, level: int,
) -> list[PatchReport]:
    earlier = [v for v in store.versions(new.product_id) if v.version != new.version_id]
    reports: list[PatchReport] = []
    for rec in earlier[-previous:] if previous > 0 else []:
        old = store.read_manifest(new.product_id, rec.version)
        with tempfile.TemporaryDirectory(dir=store.root, prefix=".patchwork-") as tmp:
            index, step = _build_step_patches(
                store, old, new, scan, Path(tmp), workers=workers, memory_limit=memory_limit,
                level=level,
            )
        doc = _update_doc(store, old, new, index)
        if doc is not None:  # unsigned (the new manifest's signature proves its result)
            atomic_write(store.path(store.delta_v3_rel(new.product_id, old.version_id,
                                                       new.version_id)), doc)
        # format 2 first: an engine that finds the format-1 index looks for format 2 beside it
        for rel, blob in ((store.delta_v2_rel(new.product_id, old.version_id, new.version_id),
                           encode_delta_index(index)),
                          (store.delta_rel(new.product_id, old.version_id, new.version_id),
                           encode_delta_index(index.for_v1(), 1))):
            atomic_write(store.path(rel).with_suffix(".sig"), store.signing_key.sign(blob))
            atomic_write(store.path(rel), blob)
        reports.extend(step)
    return reports


# ---------------------------------------------------------------------------------------------
# Entry point


def publish(
    store: Store, product: str, version: str, build_dir: Path, *, level: int = DEFAULT_LEVEL,
    patch_level: int = DEFAULT_PATCH_LEVEL, workers: int = 2, patch_previous: int = 2,
    memory_limit: int = 2 * 1024**3,
) -> PublishReport:
    try:
        check_id(product, "product")
        check_id(version, "version")
    except ManifestError as exc:
        raise PublishError(str(exc), code="BUILD_ID_INVALID") from exc
    started = time.perf_counter()
    scan = scan_build(build_dir)
    earlier = store.versions(product)
    previous = store.read_manifest(product, earlier[-1].version) if earlier else None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if store.version(product, version) is not None:
            chunked, _ = _chunk_files(store, product, scan, pool, previous)
            check_unchanged(scan)
            known = store.lookup_chunks(product, {c.id for cf in chunked for c in cf.chunks})
            return _republish(store, product, version, scan, chunked, known, started)
        result = _store_build(store, product, scan, pool, previous, level)
    check_unchanged(scan)  # every read is done, and no manifest names the new packs yet
    chunked, digests, known = result.chunked, result.digests, result.known
    records, stored, restore = result.records, result.stored, result.restore
    all_ids = {c.id for cf in chunked for c in cf.chunks}
    all_records = {**known, **{r.id: r for r in records}}
    manifest = _build_manifest(product, version, scan, chunked, all_records, previous)
    blob, sig = sign_manifest(manifest, store.signing_key)
    rel = store.manifest_rel(product, version)
    atomic_write(store.path(rel).with_suffix(".sig"), sig)
    atomic_write(store.path(rel), blob)
    store.write_binary_manifest(blob)
    with store.transaction() as db:
        store.add_chunks(db, product, [r for r in records if r.id not in restore])
        # later versions find re-stored chunks at their new, dense place
        store.add_chunks(db, product, [r for r in records if r.id in restore], replace=True)
        store.add_version(db, manifest, len(blob))
        store.add_file_hashes(db, product, ((d, cf.size, cf.sha256)
                                            for d, cf in zip(digests, chunked, strict=True)))
    publish_s = time.perf_counter() - started
    t0 = time.perf_counter()
    patches = build_patches_for(
        store, manifest, scan, previous=patch_previous, workers=workers,
        memory_limit=memory_limit, level=patch_level,
    )
    report = PublishReport(
        product_id=product, version_id=version, already_published=False,
        files=len(manifest.files), total_bytes=manifest.total_size,
        chunks=len(all_ids), new_chunks=len(records) - len(restore),
        reused_chunks=len(all_ids) - len(records) + len(restore), restored_chunks=len(restore),
        stored_bytes=stored, install_bytes=install_bytes(manifest), publish_seconds=publish_s,
        patch_seconds=time.perf_counter() - t0, patches=tuple(patches),
    )
    log.info("published %s %s: %d files, %d new chunks", product, version, report.files,
             report.new_chunks)
    return report


def _republish(
    store: Store, product: str, version: str, scan: BuildScan, chunked: list[ChunkedFile],
    known: dict[str, ChunkRecord], started: float,
) -> PublishReport:
    """Same version again: a no-op when the content is identical, an error otherwise."""
    current = store.read_manifest(product, version)
    missing = {c.id for cf in chunked for c in cf.chunks} - known.keys()
    if missing:
        raise PublishError(f"{product} {version} is already published with other content",
                           code="VERSION_EXISTS")
    candidate = _build_manifest(product, version, scan, chunked, known)
    if not _same_content(current, candidate):
        raise PublishError(f"{product} {version} is already published with other content",
                           code="VERSION_EXISTS")
    store.ensure_binary_manifest(product, version)  # one published before the form existed
    return PublishReport(
        product_id=product, version_id=version, already_published=True,
        files=len(current.files), total_bytes=current.total_size, chunks=len(current.chunks),
        new_chunks=0, reused_chunks=len(current.chunks), stored_bytes=0,
        install_bytes=install_bytes(current), publish_seconds=time.perf_counter() - started,
        patch_seconds=0.0,
    )
