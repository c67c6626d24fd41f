"""Verify an install against its manifest: every chunk's BLAKE3, in parallel, reporting the
damaged byte ranges, missing files, wrong sizes and extra files. The quick mode checks presence
and size, and re-hashes only the files whose metadata (size, mtime, ctime, inode) differs from
the verified-metadata record (``engine/io/verifiedmeta.py``); without a record it checks
presence and size only. A full verify refreshes the record."""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import queue
import stat
import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from engine.core.errors import EngineError
from engine.io.fsops import safe_join, translate_os_error
from engine.io.staging import STAGING_DIR
from engine.io.verifiedmeta import VerifiedRecord
from patcher.chunking import CHUNK_MAX
from patcher.manifest import FileEntry, Manifest, chunk_rows

log = logging.getLogger(__name__)

# A read holds whole chunks, up to this many bytes (one chunk when it is larger). Reads of a
# quarter MiB kept the kernel's read-ahead ahead of the hashing: 1.25 MiB reads measured 1.95
# GB/s cold where 256 KiB ones made 2.2 (session 30, ``cat`` 2.4)
SPAN_BYTES = 256 * 1024
# A big file is checked in pieces of whole chunks (see _piece_bytes), so every worker can read
# (one file of a third of the game does not leave one worker reading it alone at the end)
PIECE_MIN = 32 * 1024 * 1024
PIECES_PER_WORKER = 1
# and never over this: a worker looks at the stop flag between pieces (an error in another
# worker, or the consumer gone), so a piece bounds how long that takes (~1 s here)
PIECE_MAX = 1024 * 1024 * 1024
# small files go to the workers in groups of up to this many bytes / files
BATCH_BYTES = 1024 * 1024
BATCH_FILES = 16
# Files are read through the page cache, with the kernel's read-ahead, by one worker per core
# (BLAKE3 is the only CPU a verify spends). Session 22 read with O_DIRECT and six workers (no
# page-cache copy; on that host 0.78 -> 0.95x ``cat`` cold), but on a host whose disk streams
# 2-3 GB/s with an 8 MiB read-ahead, O_DIRECT's 1 MiB reads (4 and 8 MiB alike, 6 to 24
# workers) stayed at ~1.4 GB/s, 0.45-0.79x ``cat`` cold, while two page-cache readers kept up
# with ``cat`` (1.03x; session 28, docs/benchmarks-update.md); and a verify right after an
# install (the files still cached) ran at disk speed instead of memory speed. ``DIRECT_READS``
# turns O_DIRECT back on (the engine keeps the path: it also reads what the disk holds rather
# than cached pages). Where the file system refuses O_DIRECT, the page cache is used.
WORKERS = max(2, min(8, os.cpu_count() or 2))
DIRECT_READS = False
ALIGN = 4096  # offsets, lengths and buffers of O_DIRECT reads (covers 512 B and 4 KiB sectors)
_O_DIRECT = getattr(os, "O_DIRECT", 0) if DIRECT_READS else 0


@dataclass(frozen=True, slots=True)
class DamagedRange:
    path: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class VerifyReport:
    product_id: str
    version_id: str
    quick: bool
    files_checked: int
    bytes_checked: int
    seconds: float
    missing: tuple[str, ...] = ()
    wrong_size: tuple[str, ...] = ()
    damaged: tuple[DamagedRange, ...] = ()
    extra: tuple[str, ...] = field(default=())
    links: tuple[str, ...] = ()  # a link stands at the file or one of its folders (not followed)
    # quick mode: files (and their bytes) taken as whole from the verified-metadata record,
    # not re-hashed; ``bytes_checked`` counts only what was hashed
    unchanged_files: int = 0
    unchanged_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong_size or self.damaged or self.links)

    def damaged_paths(self) -> set[str]:
        return (set(self.missing) | set(self.wrong_size) | set(self.links)
                | {d.path for d in self.damaged})

    def to_dict(self) -> dict[str, Any]:
        return {
            "productId": self.product_id, "versionId": self.version_id, "quick": self.quick,
            "ok": self.ok, "filesChecked": self.files_checked, "bytesChecked": self.bytes_checked,
            "seconds": round(self.seconds, 3),
            "missing": list(self.missing), "wrongSize": list(self.wrong_size),
            "damaged": [{"path": d.path, "offset": d.offset, "size": d.size} for d in self.damaged],
            "extra": list(self.extra), "links": list(self.links),
            "unchangedFiles": self.unchanged_files, "unchangedBytes": self.unchanged_bytes,
        }


def _native_check_chunks() -> CheckChunks | None:
    """A piece's reads and hashes in one call without the GIL (engine/io/_blake3batch.c,
    built by scripts/build_native.sh); None where it is not built: chunk by chunk in Python."""
    try:
        from engine.io._blake3batch import check_chunks
    except ImportError:
        return None
    return check_chunks


# (fd, spans as uint64 (offset, size) pairs, ids joined, buffer, read bytes) -> a flag per
# chunk: 0 ok, 1 wrong bytes, 2 past the end of the file
CheckChunks = Callable[[int, "array[int]", bytes, memoryview, int], bytes]
_check_chunks = _native_check_chunks()

_local = threading.local()


def _span_buffer() -> memoryview:
    """The worker thread's read buffer, page-aligned (an anonymous map) for O_DIRECT."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(mmap.mmap(-1, max(SPAN_BYTES, CHUNK_MAX) + 2 * ALIGN))
    return view


Status = str  # 'ok' | 'missing' | 'link' | 'size' | 'damaged'

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Folder descriptors kept open at once, beyond those the files in flight hold. A game can have
# thousands of folders and the usual soft limit of open files is 1,024: holding every folder
# for the whole scan made verify and repair fail with EMFILE past ~1,010 folders.
MAX_OPEN_FOLDERS = 64


class _Folders:
    """The install's folders, each opened from its parent's descriptor without following a
    link, shared by the workers. A file is then stat'ed and opened relative to its folder: no
    link is ever followed (as ``safe_join`` guarantees) and there is no path walk per file,
    which cost small files more than their bytes did (measured: 296 files of ~7 kB took a
    quarter of a 330 MB scan)."""

    def __init__(self, root: Path, max_open: int = MAX_OPEN_FOLDERS) -> None:
        self._root = root
        self._max_open = max_open
        self._lock = threading.Lock()
        # least recently used first; a folder's outcome, its descriptor or 'missing' | 'link'
        self._open: OrderedDict[str, int | Status] = OrderedDict()
        self._fds = 0  # descriptors among them
        self._held: dict[int, int] = {}  # descriptor -> files in flight that read through it

    def get(self, rel_dir: str) -> int | Status:
        """The folder's descriptor, or 'missing' | 'link' (a link or a non-folder in the way).
        The descriptor stays valid until the next call that opens a folder, unless held."""
        with self._lock:
            return self._get(rel_dir, set())

    def hold(self, fd: int) -> None:
        """Keep ``fd`` open until :meth:`release`: a file's pieces are read through it."""
        with self._lock:
            self._held[fd] = self._held.get(fd, 0) + 1

    def room_for_more(self) -> bool:
        """Whether more files may be taken into flight: the folders they hold open (which
        cannot be closed to make room) are under half the cap (a batch of small files can come
        from 16 folders)."""
        with self._lock:
            return len(self._held) < self._max_open // 2

    def release(self, fd: int) -> None:
        with self._lock:
            left = self._held[fd] - 1
            if left:
                self._held[fd] = left
            else:
                del self._held[fd]

    def _make_room(self, keep: set[int]) -> None:
        """Close the least recently used folders that no file in flight holds, down to the cap
        (their outcome is found again if another file needs them)."""
        if self._fds < self._max_open:
            return
        for rel_dir, fd in list(self._open.items()):
            if self._fds < self._max_open:
                break
            if isinstance(fd, int) and fd not in self._held and fd not in keep:
                del self._open[rel_dir]
                os.close(fd)
                self._fds -= 1

    def _get(self, rel_dir: str, keep: set[int]) -> int | Status:
        got = self._open.get(rel_dir)
        if got is not None:
            self._open.move_to_end(rel_dir)
            return got
        result: int | Status
        if rel_dir == "":
            self._make_room(keep)
            try:
                result = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                result = "missing"
        else:
            parent, _, name = rel_dir.rpartition("/")
            up = self._get(parent, keep)
            if name in ("", ".", ".."):
                result = "link"  # never leaves the install (manifests cannot hold such paths)
            elif isinstance(up, str):
                result = up
            else:
                self._make_room(keep | {up})
                try:
                    result = os.open(name, _DIR_FLAGS, dir_fd=up)
                except FileNotFoundError:
                    result = "missing"
                except OSError as exc:
                    # ELOOP: a link (O_NOFOLLOW); ENOTDIR: a file where a folder belongs; any
                    # other failure (permissions, I/O) is not something verify can judge
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    result = "link"
        self._open[rel_dir] = result
        if isinstance(result, int):
            self._fds += 1
        return result

    def stat(self, f: FileEntry, hold: bool = False
             ) -> tuple[Status, int, os.stat_result | None]:
        """'ok' | 'missing' | 'link' | 'size', the folder's descriptor, and the file's lstat.
        ``hold``: when 'ok', the descriptor is held for the caller (see :meth:`release`)."""
        rel_dir, _, name = f.path.rpartition("/")
        with self._lock:
            where = self._get(rel_dir, set())
            if isinstance(where, str):
                return where, -1, None
            if name in ("", ".", ".."):
                return "link", -1, None
            try:
                st = os.stat(name, dir_fd=where, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return "missing", -1, None
            status = _judge(st, f)
            if status in ("link", "missing"):
                return status, -1, None
            if hold and status == "ok":
                self._held[where] = self._held.get(where, 0) + 1
            return status, where, st

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                if isinstance(fd, int):
                    os.close(fd)
            self._open.clear()
            self._fds = 0
            self._held.clear()


@dataclass(frozen=True, slots=True)
class _Piece:
    """Chunks ``first`` to ``stop`` (exclusive) of a file whose folder is open as ``where``."""
    f: FileEntry
    where: int
    offsets: Sequence[int]
    sizes: Sequence[int]
    ids: Sequence[bytes | bytearray]
    first: int
    stop: int


def _set_direct(fd: int, on: bool) -> bool:
    """O_DIRECT on (off) the open file; False where the file system refuses it."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))
    except OSError:
        return False
    return on


_NOT_THE_FILES_FAULT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO})


def _add_damage(ranges: list[DamagedRange], path: str, offset: int, size: int) -> None:
    """A damaged chunk, joined to the range before it when they touch."""
    if ranges and ranges[-1].offset + ranges[-1].size == offset:
        last = ranges.pop()
        ranges.append(DamagedRange(path, last.offset, last.size + size))
    else:
        ranges.append(DamagedRange(path, offset, size))


def _check_piece(p: _Piece) -> tuple[Status, list[DamagedRange]]:
    """'ok' | 'missing' | 'size' | 'damaged' for one piece, with its damaged ranges merged."""
    f = p.f
    ranges: list[DamagedRange] = []
    try:
        # O_NONBLOCK: a file swapped for a FIFO since its stat must not block the worker (it
        # changes nothing for a regular file)
        fd = os.open(f.path.rpartition("/")[2],
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=p.where)
    except OSError as exc:
        # no descriptor or memory left, or the disk failing: says nothing about the file, so
        # it is raised (naming the file), never reported as damage a repair would download
        # again. Otherwise (gone, a link put in its place since its stat, no permission to
        # read it) it is missing: a repair replaces it
        if exc.errno in _NOT_THE_FILES_FAULT:
            raise OSError(exc.errno, exc.strerror, f.path) from exc
        return "missing", []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "missing", []
        if st.st_size != f.size:
            return "size", []
        # one buffer per worker thread, reused across files: a fresh zero-filled MiB per file
        # cost as much as reading a small file
        view = _span_buffer()
        # offsets, sizes and raw ids straight from the manifest's arrays: no ChunkEntry per
        # chunk, and BLAKE3 digests compared as bytes
        offsets, sizes, ids = p.offsets, p.sizes, p.ids
        direct = _set_direct(fd, True)
        if not direct:
            # read-ahead for the page-cache path (measured faster than mmap on a cold cache)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            if _check_chunks is not None:
                spans = array("Q", bytes(16 * (p.stop - p.first)))
                spans[0::2] = array("Q", offsets[p.first : p.stop])
                spans[1::2] = array("Q", sizes[p.first : p.stop])
                flags = _check_chunks(fd, spans, b"".join(ids[p.first : p.stop]), view,
                                      SPAN_BYTES)
                if flags.count(0) < len(flags):
                    for k, bad in enumerate(flags, p.first):
                        if bad:
                            _add_damage(ranges, f.path, offsets[k], sizes[k])
                return ("damaged" if ranges else "ok"), ranges
        i = p.first
        while i < p.stop:
            start = offsets[i]
            j = i
            while j < p.stop and (j == i or offsets[j] + sizes[j] - start <= SPAN_BYTES):
                j += 1
            end = offsets[j - 1] + sizes[j - 1]
            if direct:
                base = start - start % ALIGN
                try:
                    got = os.preadv(fd, [view[: end - base + (-end) % ALIGN]], base)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # the file system takes O_DIRECT but not this alignment: the page cache
                    direct = _set_direct(fd, False)
                    continue
            else:
                base = start
                got = os.preadv(fd, [view[: end - start]], start)
            for k in range(i, j):
                lo, size = offsets[k] - base, sizes[k]
                if lo + size > got or blake3.blake3(view[lo : lo + size]).digest() != ids[k]:
                    _add_damage(ranges, f.path, offsets[k], size)
            i = j
    except OSError as exc:  # a read that failed (EIO): raised, naming the file
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, f.path) from exc
        raise
    finally:
        os.close(fd)
    return ("damaged" if ranges else "ok"), ranges


_Result = tuple[Status, list[DamagedRange]]
_Done = tuple[FileEntry, Status, list[DamagedRange], "os.stat_result | None"]


def _piece_bytes(total: int, workers: int) -> int:
    """How much of a big file one worker reads in one go. Each piece is read through a fresh
    descriptor whose read-ahead starts small, so a file is split only when it is larger than a
    worker's share of the game (1 / PIECES_PER_WORKER of it, never under PIECE_MIN): the files
    go largest first to whichever worker is free, which balances the rest. Session 30, cold,
    ``cat`` at 2.4 GB/s: 8 MiB pieces 1.39 GB/s, half a share 2.1-2.3, a share 2.3, whole
    files 2.3."""
    return min(PIECE_MAX, max(PIECE_MIN, total // (workers * PIECES_PER_WORKER)))


def _pieces(f: FileEntry, where: int, piece_bytes: int) -> list[_Piece]:
    offsets, sizes, ids = chunk_rows(f.chunks)
    out: list[_Piece] = []
    first = 0
    for k in range(len(ids)):
        if k > first and offsets[k] + sizes[k] - offsets[first] > piece_bytes:
            out.append(_Piece(f, where, offsets, sizes, ids, first, k))
            first = k
    out.append(_Piece(f, where, offsets, sizes, ids, first, len(ids)))
    return out


@dataclass(slots=True)
class _InFlight:
    """A file being checked: its stat (taken before any read), and its pieces' outcomes."""
    f: FileEntry
    st: os.stat_result
    where: int
    results: list[_Result | None]


class _Work:
    """The scan's work list, shared by the workers: each takes its next task when it is free
    (a piece of a big file, or a batch of small files), so no worker waits on another's task.
    Before, tasks went to a pool a window at a time and the window advanced only when its
    oldest task was done: a worker idled while the other read a big file alone."""

    def __init__(self, folders: _Folders, order: list[FileEntry], workers: int) -> None:
        self._folders = folders
        self._files = iter(order)
        self._piece_bytes = _piece_bytes(sum(f.size for f in order), workers)
        self._lock = threading.Lock()
        self._queued: deque[tuple[_InFlight, int, _Piece]] = deque()  # a big file's pieces
        # finished files for the consumer; not bounded, as its entries are a file's outcome
        # (the report holds as much), and a bounded queue could block a worker for good once
        # the consumer has stopped
        self.done: queue.SimpleQueue[_Done | BaseException | None] = queue.SimpleQueue()
        self.stop = threading.Event()

    def _next_task(self) -> list[tuple[_InFlight, int, _Piece]]:
        """The next piece, or the next files up to BATCH_BYTES / BATCH_FILES; [] at the end.
        Files that cannot be read are reported here. Called with the lock held."""
        if self._queued:
            return [self._queued.popleft()]
        task: list[tuple[_InFlight, int, _Piece]] = []
        held = 0
        while (len(task) < BATCH_FILES and held < BATCH_BYTES
               and (not task or self._folders.room_for_more())):
            f = next(self._files, None)
            if f is None:
                break
            # the stat comes before any read (a write while hashing moves mtime/ctime past it,
            # so the record made from it never vouches for bytes that were not hashed)
            status, where, st = self._folders.stat(f, hold=True)
            if status != "ok" or st is None:
                self.done.put((f, status, [], None))
                continue
            pieces = _pieces(f, where, self._piece_bytes)
            job = _InFlight(f, st, where, [None] * len(pieces))
            if len(pieces) > 1 or f.size >= BATCH_BYTES:
                self._queued.extend((job, i, p) for i, p in enumerate(pieces))
                if not task:
                    return [self._queued.popleft()]
                break  # its pieces follow this batch
            task.append((job, 0, pieces[0]))
            held += f.size
        return task

    def _finish(self, job: _InFlight, index: int, result: _Result) -> None:
        """Record a piece's outcome; the file's, once its last piece is in."""
        with self._lock:
            job.results[index] = result
            if any(r is None for r in job.results):
                return
            self._folders.release(job.where)
        status: Status = "ok"
        ranges: list[DamagedRange] = []
        for r in job.results:
            assert r is not None
            got, piece_ranges = r
            if got in ("missing", "size") and status in ("ok", "damaged"):
                status = got
            elif got == "damaged" and status == "ok":
                status = "damaged"
            _merge(ranges, piece_ranges)
        self.done.put((job.f, status, ranges if status == "damaged" else [],
                       job.st if status in ("ok", "damaged") else None))

    def run_worker(self) -> None:
        try:
            while not self.stop.is_set():
                with self._lock:
                    task = self._next_task()
                if not task:
                    break
                for job, index, piece in task:
                    self._finish(job, index, _check_piece(piece))
        except BaseException as exc:  # handed to the consumer, which raises it
            self.done.put(exc)
        finally:
            self.done.put(None)


def _check_files(folders: _Folders, order: list[FileEntry], workers: int
                 ) -> Generator[_Done, None, None]:
    """(file, 'ok' | 'missing' | 'link' | 'size' | 'damaged', damaged ranges, stat) for every
    file of ``order``, as each is finished. The workers take the files in that order."""
    work = _Work(folders, order, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running = [pool.submit(work.run_worker) for _ in range(workers)]
        try:
            left = len(running)
            while left:
                item = work.done.get()
                if item is None:
                    left -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            # on an error or an early close the workers stop after their current task, and
            # the folders stay open until they have
            work.stop.set()
            for fut in running:
                fut.exception()


def _merge(into: list[DamagedRange], more: list[DamagedRange]) -> None:
    """Append ``more`` (in file order, after ``into``), joining ranges that touch."""
    for r in more:
        _add_damage(into, r.path, r.offset, r.size)


def _quick_status(install_dir: Path, f: FileEntry) -> str:
    """Presence, type and size only: 'ok' | 'missing' | 'link' | 'size'. Never follows a link."""
    return _stat_status(install_dir, f)[0]


def _judge(st: os.stat_result, f: FileEntry) -> Status:
    """'link' | 'missing' (not a plain file) | 'size' | 'ok' for a file's lstat."""
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if not stat.S_ISREG(st.st_mode):
        return "missing"
    return "ok" if st.st_size == f.size else "size"


def _stat_status(install_dir: Path, f: FileEntry) -> tuple[str, os.stat_result | None]:
    try:
        path = safe_join(install_dir, f.path)
        st = os.lstat(path)
    except EngineError:
        return "link", None
    except (FileNotFoundError, NotADirectoryError):
        return "missing", None
    status = _judge(st, f)
    return status, (None if status in ("link", "missing") else st)


def quick_check(install_dir: Path, manifest: Manifest, paths: list[str]) -> list[str]:
    """The paths among ``paths`` that are missing, links, not files, or of the wrong size."""
    out = []
    for rel in paths:
        f = manifest.file(rel)
        if f is not None and _quick_status(install_dir, f) != "ok":
            out.append(rel)
    return out


def _extra_files(install_dir: Path, manifest: Manifest) -> list[str]:
    known = {f.path for f in manifest.files} | set(manifest.dirs)
    parents = {"/".join(p.split("/")[:n]) for p in known for n in range(1, p.count("/") + 1)}
    ours = known | parents
    extra: list[str] = []
    top = os.fspath(install_dir)
    for dirpath, dirnames, filenames in os.walk(top):
        # relative paths by string (os.walk joins names to ``top`` with os.sep): a Path per
        # entry and a fresh set union per folder cost more than the walk itself
        rel_dir = os.path.relpath(dirpath, top)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        if not prefix:
            dirnames[:] = [d for d in dirnames if d != STAGING_DIR]
        extra.extend(prefix + name for name in filenames + dirnames
                     if prefix + name not in ours)
        dirnames[:] = [d for d in dirnames if prefix + d in ours]
    return sorted(extra)


def scan_install(install_dir: Path, manifest: Manifest, quick: bool, workers: int = WORKERS,
                 record: VerifiedRecord | None = None) -> VerifyReport:
    """Check the install. With ``record``: a quick scan hashes only the files the record does
    not vouch for, and every file hashed whole (quick or full) is written into the record,
    every other one dropped from it (the caller saves it)."""
    started = time.perf_counter()
    missing: list[str] = []
    wrong: list[str] = []
    links: list[str] = []
    damaged: list[DamagedRange] = []
    checked = 0
    unchanged_files = unchanged_bytes = 0
    by_status = {"missing": missing, "size": wrong, "link": links}
    to_hash: list[FileEntry] = []
    folders = _Folders(install_dir)
    try:
        if quick:
            for f in manifest.files:
                status, _, st = folders.stat(f)
                if status != "ok":
                    by_status[status].append(f.path)
                    if record is not None:
                        record.drop(f.path)
                elif (record is not None and st is not None
                      and record.matches(f.path, f.hash_sha256, st)):
                    unchanged_files += 1
                    unchanged_bytes += f.size
                elif record is not None:
                    to_hash.append(f)
        else:
            to_hash = list(manifest.files)
        if to_hash:
            # largest first: the small files' batches come last, when the pieces are done
            order = sorted(to_hash, key=lambda f: -f.size)
            results = _check_files(folders, order, workers)
            try:
                for f, status, ranges, st in results:
                    if status in by_status:
                        by_status[status].append(f.path)
                    else:
                        checked += f.size
                        damaged.extend(ranges)
                    if record is not None:
                        if status == "ok" and st is not None:
                            record.set(f.path, f.hash_sha256, st)
                        else:
                            record.drop(f.path)
            finally:
                results.close()  # the workers stop before their folders are closed
    except OSError as exc:  # not the game's damage: a verify that could not look (EMFILE, EIO)
        raise translate_os_error(exc, "verifying") from exc
    finally:
        folders.close()
    if record is not None:
        known = {f.path for f in manifest.files}
        for rel in [r for r in record.entries if r not in known]:
            record.drop(rel)
    return VerifyReport(
        manifest.product_id, manifest.version_id, quick, len(manifest.files), checked,
        time.perf_counter() - started, tuple(sorted(missing)), tuple(sorted(wrong)),
        tuple(sorted(damaged, key=lambda d: (d.path, d.offset))),
        tuple(_extra_files(install_dir, manifest)), tuple(sorted(links)),
        unchanged_files, unchanged_bytes,
    )


def record_install(record: VerifiedRecord, install_dir: Path, manifest: Manifest,
                   paths: list[str] | None = None) -> None:
    """After a commit: every file in ``paths`` (all when None) was just proven whole by the
    build (BLAKE3 per chunk or SHA-256 per file) and renamed into place, so its metadata now is
    what a quick verify can trust. A file that is not a plain file of the right size is left
    out (it will be hashed)."""
    wanted = set(paths) if paths is not None else None
    for f in manifest.files:
        if wanted is not None and f.path not in wanted:
            continue
        status, st = _stat_status(install_dir, f)
        if status == "ok" and st is not None:
            record.set(f.path, f.hash_sha256, st)
        else:
            record.drop(f.path)


def remember_verified(data_dir: Path, install_dir: Path, manifest: Manifest,
                      paths: list[str] | None = None) -> None:
    """Every committed file was proven whole by the build: its metadata goes into the
    verified-metadata record, so ``verify --quick`` right after need not re-hash it. Only
    ``paths`` are re-stamped (all when None); the record is a shortcut, so failing to write it
    costs a later re-hash, never the install."""
    try:
        record = VerifiedRecord.load(data_dir, manifest.product_id, install_dir)
        if paths is None:
            record.entries.clear()
        record_install(record, install_dir, manifest, paths)
        record.save()
    except Exception as exc:  # any failure: a shortcut not written must never fail the build
        log.warning("verified-metadata record for %s not written: %s", manifest.product_id,
                    getattr(exc, "message", None) or repr(exc))
