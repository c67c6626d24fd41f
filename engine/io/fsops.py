"""Safe file-system operations: the one place that decides how the engine touches a player's disk.

Rules (issue 9): nothing is written, deleted or followed through a symbolic link below an
install folder; every write loops on short writes; every replacement is atomic and durable;
file modes come from the manifest's exec bit only. The install folder itself may be a link
(a player's library on another disk): paths are checked from it downwards.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import sys
from pathlib import Path
from typing import Any

from engine.core.errors import EngineError, ErrorCode

EXEC_MODE = 0o755
PLAIN_MODE = 0o644


def install_mode(manifest_mode: int) -> int:
    """Only the exec bit of a manifest's mode is carried: 0o777 or 0o000 never reach the disk."""
    return EXEC_MODE if manifest_mode & 0o111 else PLAIN_MODE


def translate_os_error(exc: OSError, what: str) -> EngineError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EngineError(ErrorCode.INSUFFICIENT_DISK_SPACE, f"disk full while {what}")
    name = f" ({exc.filename})" if exc.filename else ""
    return EngineError(ErrorCode.IO_ERROR, f"{what}: {exc.strerror or exc}{name}")


def _check_rel(root: Path, rel: str) -> list[str]:
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel
            or any(p in ("", ".", "..") for p in parts)):
        raise EngineError(ErrorCode.MANIFEST_PATH_INVALID, f"{rel!r} is not a path inside {root}", item=rel)
    return parts


def first_link(root: Path, rel: str) -> Path | None:
    """The first existing component of ``root/rel`` (below ``root``) that is a symbolic link, or
    a non-directory standing where a directory is needed; None when the path is clean."""
    parts = _check_rel(root, rel)
    path = root
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return path
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return path
    return None


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing traversal and any link (or file used as a folder) below root."""
    bad = first_link(root, rel)
    if bad is not None:
        kind = "a symbolic link" if bad.is_symlink() else "not a folder"
        raise EngineError(ErrorCode.UNSAFE_PATH, f"{bad} is {kind}; the engine never follows or writes "
                          f"through it", item=rel)
    return root / rel


def is_link_or_missing(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite that loops on short writes (a signal or a nearly full disk can cut one short)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        done += n


def pwritev_all(fd: int, pieces: list[memoryview], offset: int) -> None:
    """Write consecutive pieces at ``offset`` with as few system calls as possible (one
    ``pwritev`` when nothing is cut short), looping on short writes like ``pwrite_all``."""
    if not hasattr(os, "pwritev"):  # not on every platform
        for piece in pieces:
            pwrite_all(fd, piece, offset)
            offset += len(piece)
        return
    todo = [p for p in pieces if len(p)]
    while todo:
        n = os.pwritev(fd, todo[:1024], offset)  # IOV_MAX is 1024 on Linux
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += n
        while todo and n >= len(todo[0]):
            n -= len(todo[0])
            todo.pop(0)
        if n:
            todo[0] = todo[0][n:]


def rename_noreplace(src: Path, dest: Path) -> bool:
    """Rename ``src`` to ``dest`` only if nothing is at ``dest``: False when something is (a
    file, a link or a folder, even an empty one, made meanwhile), never replaced. Linux's
    renameat2(RENAME_NOREPLACE) makes the check and the rename one step; where it is missing
    (another system, an old C library, a file system without the flag) a look just before the
    rename stands in for it."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(-100, os.fsencode(src), -100, os.fsencode(dest), 1) == 0:  # AT_FDCWD
            return True
        err = ctypes_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(src), None, str(dest))
    if os.path.lexists(dest):
        return False
    os.rename(src, dest)
    return True


_RENAMEAT2: list[Any] = []


def _renameat2() -> Any:
    """libc's renameat2, or None (looked up once, on first use: ctypes is not imported by a
    command that renames nothing)."""
    if not _RENAMEAT2:
        fn = None
        if sys.platform == "linux":
            import ctypes

            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (AttributeError, OSError):
                fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


def ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno()


def set_mode(path: Path, mode: int) -> None:
    """chmod of the regular file at ``path`` itself: a link there is refused (UNSAFE_PATH), never
    followed to change the mode of what it points at."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise EngineError(ErrorCode.UNSAFE_PATH, f"{path} is a symbolic link; the engine "
                              "never follows it", item=str(path)) from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EngineError(ErrorCode.UNSAFE_PATH, f"{path} is not a regular file",
                              item=str(path))
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, never a mix:
    tmp file, fsync it, rename over, fsync the folder. Not ``durable``: no fsync — for a file
    whose loss or damage costs only work (a cache a reader checks), not two journal commits."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        pwrite_all(fd, data, 0)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def remove_empty_parents(root: Path, rel: str) -> None:
    """rmdir the folders of ``rel`` below ``root`` that are now empty (never a link's target)."""
    parts = rel.split("/")[:-1]
    while parts:
        d = root.joinpath(*parts)
        try:
            if stat.S_ISLNK(os.lstat(d).st_mode):
                return
            os.rmdir(d)
        except OSError:
            return
        parts.pop()


SQLITE_IOERR = 10
SQLITE_FULL = 13
LOW_SPACE_BYTES = 1 << 20  # an I/O error with less free space than this is a full disk


def _nearly_full(path: Path | None) -> bool:
    """True when the filesystem holding ``path`` (or its nearest existing parent) is full."""
    if path is None:
        return False
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES


def storage_error(exc: OSError | sqlite3.Error, what: str, where: Path | None = None) -> EngineError:
    """Translate a failed write of the engine's own files (state database, config) at a boundary.

    ``INSUFFICIENT_DISK_SPACE`` when the cause is a full disk: ENOSPC/EDQUOT, SQLite's
    "database or disk is full", or an SQLite I/O error while the filesystem of ``where`` has
    (almost) no space left (SQLite reports a shared-memory file it cannot allocate that way).
    ``IO_ERROR`` otherwise. ``where`` is the data dir; it becomes the error's item.
    """
    item = str(where) if where is not None else None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(exc)
        full = primary == SQLITE_FULL or "database or disk is full" in text or (
            (primary == SQLITE_IOERR or "disk I/O error" in text) and _nearly_full(where))
        detail = f"state database: {text}"
    else:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        detail = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    if full:
        return EngineError(ErrorCode.INSUFFICIENT_DISK_SPACE,
                           f"disk full while {what} ({detail}); free some space"
                           + (f" on the filesystem of {where}" if where is not None else ""),
                           item=item)
    return EngineError(ErrorCode.IO_ERROR, f"{what}: {detail}", item=item)
