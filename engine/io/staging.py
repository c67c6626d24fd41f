"""The staging area: files are built inside ``<install>/.launcher-staging/<task>/`` (same
filesystem, so commit is a rename) and moved into place only when verified.

The engine creates the staging folder itself and marks it; a ``.launcher-staging`` that is a
link, a file, or a folder the engine did not create is refused, never written through. Every
path is checked component by component (no links below the install folder) before anything is
opened, and files are opened with O_NOFOLLOW: the manifest loader already refuses traversal,
this is the second lock on the door.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from engine.core.errors import EngineError, ErrorCode
from engine.io.fsops import (
    fsync_dir,
    install_mode,
    pwritev_all,
    rename_noreplace,
    safe_join,
    set_mode,
    translate_os_error,
)
from patcher.ids import RESERVED_PREFIX

if TYPE_CHECKING:  # the manifest module is the pipeline's (imported beside a run's grant)
    from patcher.manifest import FileEntry, Manifest

# the manifest loader refuses every name with this prefix, so no game can own these paths
STAGING_DIR = RESERVED_PREFIX + "staging"
OWNER_MARK = ".created-by-launcher"
_TASK_ENTRY = re.compile(r"^([0-9a-f]{32})(\.old)?$")
# The native block processor writes a run's whole pages through a second, O_DIRECT fd of the
# staged file (engine/io/_blockproc.c says why); Linux only, and a file system that refuses
# the flag gets the page cache
DIRECT_WRITES = sys.platform == "linux" and hasattr(os, "O_DIRECT")
# ``direct_writes = auto``: games from this size. Measured on the 2-core VM (issue 13, session
# 29): a 1 GiB game installed 16-24% slower with direct writes (its page cache is cheap to
# fill), a 4 GiB game 29-47% faster and a 16 GiB one 67% faster (498 -> 834 MB/s, half the
# CPU): their page cache had to grow into memory the host had to fault back in, and it
# evicted everything else the player's machine had cached.
DIRECT_WRITES_FROM = 2 << 30
# the native block processor's shortest direct run (DIRECT_MIN in engine/io/_blockproc.c): a
# smaller file never gets a direct fd (tests/unit/test_blockproc.py checks the two agree)
DIRECT_MIN = 64 * 1024


def direct_writes_for(setting: str, game_bytes: int) -> bool:
    """Whether a task's staged files are written past the page cache (``direct_writes``)."""
    return setting == "on" or (setting == "auto" and game_bytes >= DIRECT_WRITES_FROM)


__all__ = ["STAGING_DIR", "Staging", "direct_writes_for", "fsync_dir", "remove_task_staging", "safe_join",
           "staging_root", "sweep_staging", "translate_os_error"]


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def staging_root(install_dir: Path, create: bool) -> Path | None:
    """``<install>/.launcher-staging`` when it is the engine's own folder (created now when
    ``create``); None when absent; UNSAFE_PATH when something else stands there."""
    root = install_dir / STAGING_DIR
    st = _lstat(root)
    if st is None:
        if not create:
            return None
        try:
            root.mkdir(parents=True)
            (root / OWNER_MARK).touch()
        except OSError as exc:
            raise translate_os_error(exc, f"creating {root}") from exc
        return root
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise EngineError(ErrorCode.UNSAFE_PATH, f"{root} is not a folder the launcher created "
                          "(a link or a file); move it away and retry", item=STAGING_DIR)
    if _lstat(root / OWNER_MARK) is None:
        if any(root.iterdir()):
            raise EngineError(ErrorCode.UNSAFE_PATH, f"{root} was not created by the launcher; move it "
                              "away and retry", item=STAGING_DIR)
        (root / OWNER_MARK).touch()  # an empty folder left by a kill between mkdir and mark
    return root


def sweep_staging(install_dir: Path, keep: set[str]) -> list[str]:
    """Remove the staging of tasks not in ``keep`` (finished, cancelled, unknown), and the
    staging folder itself once empty. Only the engine's own entries are touched."""
    root = staging_root(install_dir, create=False)
    if root is None:
        return []
    removed: list[str] = []
    for entry in root.iterdir():
        m = _TASK_ENTRY.match(entry.name)
        if m is None or m.group(1) in keep:
            continue
        st = _lstat(entry)
        if st is not None and stat.S_ISDIR(st.st_mode):
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    remove_if_unused(root)
    return removed


def remove_if_unused(root: Path) -> None:
    """Drop the staging folder when only its mark is left."""
    try:
        names = [p.name for p in root.iterdir()]
    except FileNotFoundError:
        return
    if names in ([], [OWNER_MARK]):
        (root / OWNER_MARK).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            root.rmdir()


class Staging:
    """Staged files of one task, opened for positional writes from worker threads."""

    def __init__(self, install_dir: Path, task_id: str, manifest: Manifest,
                 direct_writes: str = "off") -> None:
        self.install_dir = install_dir
        self.root = install_dir / STAGING_DIR / task_id
        self.backup = install_dir / STAGING_DIR / f"{task_id}.old"
        self.manifest = manifest
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()  # _fds is shared by the loop and the engine-io threads
        self._users: dict[int, int] = {}  # fd -> worker-thread calls using it right now
        self._doomed: set[int] = set()  # closed while in use: closed by its last user
        self._unprepared: set[int] = set()  # staged files to create on first use
        self._direct: dict[int, int] = {}  # fd -> the same file opened with O_DIRECT, or -1
        # written past the page cache (the ``direct_writes`` setting for this game); False
        # once the file system refused the flag
        self._direct_ok = DIRECT_WRITES and direct_writes_for(direct_writes, manifest.total_size)

    def open_root(self, create: bool) -> bool:
        """Check (and create) the task's staging folder; False when it does not exist."""
        parent = staging_root(self.install_dir, create)
        if parent is None:
            return False
        st = _lstat(self.root)
        if st is None:
            if not create:
                return False
            self.root.mkdir()
        elif stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise EngineError(ErrorCode.UNSAFE_PATH, f"{self.root} is not a folder", item=STAGING_DIR)
        return True

    def path(self, file_index: int) -> Path:
        return safe_join(self.root, self.manifest.files[file_index].path)

    def path_of(self, rel: str) -> Path:
        return safe_join(self.root, rel)

    def allocated_bytes(self) -> int:
        """Bytes already allocated by staged files (counts toward free-space checks)."""
        if not self.open_root(create=False):
            return 0
        total = 0
        for i in range(len(self.manifest.files)):
            st = _lstat(self.path(i))
            if st is not None and stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
        return total

    def prepare(self, file_indexes: list[int]) -> None:
        """Create and preallocate staged files, so a full disk shows up before the download."""
        try:
            self.open_root(create=True)
            for i in file_indexes:
                f = self.manifest.files[i]
                p = self.path(i)
                p.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                try:
                    if os.fstat(fd).st_size != f.size:
                        os.ftruncate(fd, f.size)
                    if f.size and hasattr(os, "posix_fallocate"):
                        os.posix_fallocate(fd, 0, f.size)
                    # its final mode now, beside the download: the commit moves it as it is
                    os.fchmod(fd, install_mode(f.mode))
                finally:
                    os.close(fd)
        except OSError as exc:
            raise translate_os_error(exc, "preparing staged files") from exc

    def prepare_lazily(self, file_indexes: list[int]) -> None:
        """Like ``prepare``, but each file is created when first used (a write, a sync, a
        verify) or by ``prepare_rest`` beside the download: the first range starts without
        waiting for every file's mkdir, create, truncate and fallocate (285 files: 60-150 ms).
        Only these files may be created late; a staged file that vanishes otherwise stays an
        error (recreating it would hide the loss of what was written into it)."""
        self.open_root(create=True)
        with self._lock:
            self._unprepared.update(file_indexes)

    @property
    def unprepared(self) -> bool:
        return bool(self._unprepared)

    def prepare_rest(self, stop: threading.Event | None = None) -> None:
        """Create every file ``prepare_lazily`` left, in index order (a worker thread), until
        ``stop`` is set (the run is ending: what is left is created when first used)."""
        with self._lock:
            todo = sorted(self._unprepared)
        for i in todo:
            if stop is not None and stop.is_set():
                return
            self._ensure_prepared(i)

    def _ensure_prepared(self, file_index: int) -> None:
        with self._lock:
            if file_index not in self._unprepared:
                return
        # outside the lock (fallocate can take a while); two threads preparing one file is
        # harmless: the size only ever grows to the file's size, data written stays
        self.prepare([file_index])
        with self._lock:
            self._unprepared.discard(file_index)

    def fd(self, file_index: int) -> int:
        """The staged file's fd (opened once). Only for the loop thread's own sequential use:
        worker threads write through ``pwritev``/``pwrite``/``write_whole`` and sync through
        ``sync``, which never use an fd another thread may close meanwhile."""
        fd = self._fds.get(file_index)
        if fd is None:
            with self._lock:  # two worker threads opening the same file: one fd, none leaked
                fd = self._fds.get(file_index)
                if fd is None:
                    fd = os.open(self.path(file_index), os.O_RDWR | os.O_NOFOLLOW)
                    self._fds[file_index] = fd
        return fd

    @contextlib.contextmanager
    def _held(self, file_index: int, open_it: bool) -> Iterator[int | None]:
        """The file's fd, held open for the call: a file verified (and closed) or a run
        cancelled (staging closed) while a worker thread still writes or syncs must not turn
        that call into EBADF — or into a write to whatever file reused the fd number. A close
        meanwhile is left to the last user (a count, not a ``dup`` and ``close`` per write: two
        system calls per block)."""
        if open_it and self._unprepared:
            self._ensure_prepared(file_index)
        with self._lock:
            fd = self._fds.get(file_index)
            if fd is not None:
                self._users[fd] = self._users.get(fd, 0) + 1
        if fd is None and open_it:
            # opened outside the lock, which every block's writes take: an open waits for the
            # folder's lock while a file is created beside it (prepare_rest), and every range
            # thread waited behind it with both cores idle
            opened = os.open(self.path(file_index), os.O_RDWR | os.O_NOFOLLOW)
            with self._lock:
                fd = self._fds.get(file_index)
                if fd is None:
                    fd = self._fds[file_index] = opened
                self._users[fd] = self._users.get(fd, 0) + 1
            if fd != opened:  # another thread opened it meanwhile: its fd is the file's
                with contextlib.suppress(OSError):  # released even when close reports an error
                    os.close(opened)
        try:
            yield fd
        finally:
            if fd is not None:
                with self._lock:
                    left = self._users.pop(fd) - 1
                    if left:
                        self._users[fd] = left
                    last = not left and fd in self._doomed
                    if last:
                        self._doomed.discard(fd)
                if last:
                    self._close_now(fd)

    def _close_fd(self, fd: int) -> None:
        """Close ``fd`` now, or when its last user is done (caller holds no lock)."""
        with self._lock:
            if self._users.get(fd):
                self._doomed.add(fd)
                return
        self._close_now(fd)

    def _close_now(self, fd: int) -> None:
        """Close ``fd`` and its direct fd: the pair is forgotten before the number can be
        reused by another file's open."""
        with self._lock:
            direct = self._direct.pop(fd, -1)
        if direct >= 0:
            os.close(direct)
        os.close(fd)

    def _direct_fd(self, fd: int, size: int) -> int:
        """The held ``fd``'s file opened again with O_DIRECT (once), or -1: also for a file
        too small for a direct write (``DIRECT_MIN``: a second fd per small file only used up
        descriptors). Through /proc/self/fd: the very inode ``fd`` holds, whatever its path has
        become."""
        if not self._direct_ok or size < DIRECT_MIN:
            return -1
        with self._lock:
            direct = self._direct.get(fd)
            if direct is None:
                try:
                    direct = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT)
                except OSError as exc:
                    direct = -1
                    if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                        # no /proc, or a file system without direct I/O: not for any file
                        self._direct_ok = False
                self._direct[fd] = direct
        return direct

    @contextlib.contextmanager
    def held(self, file_indexes: Iterable[int]) -> Iterator[dict[int, tuple[int, int]]]:
        """The files' fds and direct fds (-1: none), opened as needed, each held as ``_held``
        does for the whole call: for a native call that writes them all without the GIL
        (engine/io/_blockproc.c)."""
        with contextlib.ExitStack() as stack:
            fds: dict[int, tuple[int, int]] = {}
            for i in file_indexes:
                fd = stack.enter_context(self._held(i, True))
                assert fd is not None
                fds[i] = (fd, self._direct_fd(fd, self.manifest.files[i].size))
            yield fds

    def pwritev(self, file_index: int, pieces: list[memoryview], offset: int) -> None:
        with self._held(file_index, True) as fd:
            assert fd is not None
            pwritev_all(fd, pieces, offset)

    def pwrite(self, file_index: int, data: bytes, offset: int) -> None:
        """``data`` at ``offset``, through the held fd (any thread)."""
        self.pwritev(file_index, [memoryview(data)], offset)

    def write_whole(self, file_index: int, data: bytes) -> None:
        """The staged file becomes exactly ``data`` (a patch's output), through the held fd."""
        with self._held(file_index, True) as fd:
            assert fd is not None
            os.ftruncate(fd, len(data))
            pwritev_all(fd, [memoryview(data)], 0)

    def sync(self, file_indexes: set[int]) -> None:
        for i in file_indexes:
            with self._held(i, False) as fd:
                if fd is not None:
                    os.fdatasync(fd)

    def sync_file(self, file_index: int) -> None:
        """fdatasync one staged file (opened if needed), then close it."""
        with self._held(file_index, True) as fd:
            assert fd is not None
            os.fdatasync(fd)
        self.close_file(file_index)

    def close_file(self, file_index: int) -> None:
        with self._lock:
            fd = self._fds.pop(file_index, None)
        if fd is not None:
            self._close_fd(fd)

    def close(self) -> None:
        with self._lock:
            fds = list(self._fds.values())
            self._fds.clear()
        for fd in fds:
            self._close_fd(fd)

    def verify(self, file_index: int) -> bool:
        """SHA-256 of the staged file against the manifest (runs in a worker thread)."""
        f = self.manifest.files[file_index]
        digest = hashlib.sha256()
        self._ensure_prepared(file_index)
        fd = os.open(self.path(file_index), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
            os.fsync(fh.fileno())  # durable before the journal calls it verified
        return digest.hexdigest() == f.hash_sha256

    def is_committed(self, file_index: int) -> bool:
        """The staged file is gone and the install holds a regular file in its place."""
        rel = self.manifest.files[file_index].path
        if _lstat(self.path(file_index)) is not None:
            return False
        st = _lstat(safe_join(self.install_dir, rel))
        return st is not None and stat.S_ISREG(st.st_mode)

    def commit_all(self, pause_s: float | None = None) -> set[Path]:
        """Move every staged file into the install folder; the folders whose entries changed
        (to be fsynced: every folder from a file's up to the install folder). Whole folders
        move in one rename each where they can (``commit_tree``): their files are committed
        (the mode set if an older engine staged them); every other file is committed one by one
        (``commit_file``). ``pause_s``: QA's wider window for a kill."""
        moved = self.commit_tree(pause_s)
        touched = {self.install_dir}
        for fi, f in enumerate(self.manifest.files):
            mode = moved.get(f.path)
            if mode is None:
                self.commit_file(fi)
            elif stat.S_IMODE(mode) != install_mode(f.mode):
                set_mode(self.install_dir / f.path, install_mode(f.mode))
            touched.update(self.install_dir / folder for folder in _parents(f.path))
            if pause_s:
                time.sleep(pause_s)
        return touched

    def commit_tree(self, pause_s: float | None = None) -> dict[str, int]:
        """Move each top-level entry of the staged game (a folder with all its files, or a
        file) into the install folder in one rename where nothing stands in its way there: the
        1 GiB demo's 285 files took 25-32 ms of renames one by one, and the staging's emptied
        folders 10-130 ms to remove. A folder moves whole only if it holds nothing but the
        game's own files (regular files) and folders, none of them a link (a walk before the
        move, one for each folder); what cannot move whole (something else inside, a name
        already taken in the install folder: a commit cut short by a kill, or something put
        there meanwhile) is left to ``commit_file``, file by file, with its conflict checks,
        and anything that is not the game's stays in staging, removed with it. ``pause_s``:
        QA's wider window for a kill between two renames. Returns the files moved (relative
        path -> st_mode)."""
        files = {f.path for f in self.manifest.files}
        folders = {folder for rel in (*files, *(f"{d}/" for d in self.manifest.dirs))
                   for folder in _parents(rel)}
        moved: dict[str, int] = {}
        for name in sorted({rel.split("/", 1)[0] for rel in files | folders}):
            src = safe_join(self.root, name)  # checks the name; first_link: no link at src
            st = _lstat(src)
            if st is None:
                continue  # committed already, or never staged
            found: dict[str, int] | None = None
            if stat.S_ISREG(st.st_mode):
                found = {name: st.st_mode} if name in files else None
            elif stat.S_ISDIR(st.st_mode) and name in folders:
                found = _game_files(src, name, files, folders)
            # anything else (a link, a device) is refused by commit_file
            if found is not None and rename_noreplace(src, safe_join(self.install_dir, name)):
                moved.update(found)
                if pause_s:
                    time.sleep(pause_s)
        return moved

    def commit_file(self, file_index: int) -> None:
        """Move one verified staged file into the install folder (atomic rename). Never replaces
        anything: a path the launcher did not create is a conflict, reported and left alone."""
        f: FileEntry = self.manifest.files[file_index]
        src = self.path(file_index)
        if _lstat(src) is None:
            if self.is_committed(file_index):
                # renamed before a crash, or moved with its folder: the rename is the commit
                # (staged by an engine that left the mode to the commit: set now)
                dest = safe_join(self.install_dir, f.path)
                if stat.S_IMODE(os.lstat(dest).st_mode) != install_mode(f.mode):
                    set_mode(dest, install_mode(f.mode))
                return
            raise EngineError(ErrorCode.IO_ERROR, f"staged copy of {f.path} is missing", item=f.path)
        dest = safe_join(self.install_dir, f.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        set_mode(src, install_mode(f.mode))
        if not rename_noreplace(src, dest):
            raise EngineError(ErrorCode.PATH_CONFLICT, f"{dest} appeared in the install folder during the "
                              "install and was not put there by the launcher; nothing was "
                              "replaced — move it away and run the install again", item=f.path)

    def remove(self) -> None:
        """Delete this task's staging (and its switch backup); the folder once unused."""
        self.close()
        remove_task_staging(self.install_dir, self.root.name)


def _game_files(path: str | Path, rel: str, files: set[str], folders: set[str]
                ) -> dict[str, int] | None:
    """The staged folder ``path`` (the game's ``rel``): its files (relative path -> st_mode)
    when it holds nothing but the game's own files (regular files) and folders (real folders,
    not links) all the way down, else None."""
    found: dict[str, int] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            name = f"{rel}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                inner = _game_files(entry.path, name, files, folders) if name in folders else None
                if inner is None:
                    return None
                found.update(inner)
            elif entry.is_file(follow_symlinks=False) and name in files:
                found[name] = entry.stat(follow_symlinks=False).st_mode
            else:
                return None
    return found


def _parents(rel: str) -> Iterator[str]:
    """The folders a relative path lies in, nearest first: "a/b/c" -> "a/b", "a"."""
    folder = posixpath.dirname(rel)
    while folder:
        yield folder
        folder = posixpath.dirname(folder)


def remove_task_staging(install_dir: Path, task_id: str) -> None:
    parent = staging_root(install_dir, create=False)
    if parent is None:
        return
    for d in (parent / task_id, parent / f"{task_id}.old"):
        st = _lstat(d)
        if st is not None and stat.S_ISDIR(st.st_mode):
            shutil.rmtree(d)
    remove_if_unused(parent)
