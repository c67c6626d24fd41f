"""The staging area: files are built inside ``<install>/.launcher-staging/`` (same filesystem,
so commit is a rename) and moved into place only when verified.

Every path is checked to resolve inside its root before anything is opened: the manifest loader
already refuses traversal, this is the second lock on the door.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

from engine.errors import EngineError
from patcher.manifest import FileEntry, Manifest

STAGING_DIR = ".launcher-staging"


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing anything that would land outside ``root``."""
    target = (root / rel).resolve()
    base = root.resolve()
    if target != base and base not in target.parents:
        raise EngineError("MANIFEST_PATH_INVALID", f"{rel!r} resolves outside {root}", item=rel)
    return target


def translate_os_error(exc: OSError, what: str) -> EngineError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EngineError("INSUFFICIENT_DISK_SPACE", f"disk full while {what}")
    return EngineError("IO_ERROR", f"{what}: {exc.strerror or exc}")


class Staging:
    """Staged files of one task, opened for positional writes from worker threads."""

    def __init__(self, install_dir: Path, task_id: str, manifest: Manifest) -> None:
        self.install_dir = install_dir
        self.root = install_dir / STAGING_DIR / task_id
        self.manifest = manifest
        self._fds: dict[int, int] = {}

    def path(self, file_index: int) -> Path:
        return safe_join(self.root, self.manifest.files[file_index].path)

    def path_of(self, rel: str) -> Path:
        return safe_join(self.root, rel)

    def allocated_bytes(self) -> int:
        """Bytes already allocated by staged files (counts toward free-space checks)."""
        total = 0
        for i in range(len(self.manifest.files)):
            p = self.path(i)
            if p.exists():
                total += p.stat().st_blocks * 512
        return total

    def prepare(self, file_indexes: list[int]) -> None:
        """Create and preallocate staged files, so a full disk shows up before the download."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for i in file_indexes:
                f = self.manifest.files[i]
                p = self.path(i)
                p.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    if os.fstat(fd).st_size != f.size:
                        os.ftruncate(fd, f.size)
                    if f.size and hasattr(os, "posix_fallocate"):
                        os.posix_fallocate(fd, 0, f.size)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise translate_os_error(exc, "preparing staged files") from exc

    def fd(self, file_index: int) -> int:
        fd = self._fds.get(file_index)
        if fd is None:
            fd = os.open(self.path(file_index), os.O_RDWR)
            self._fds[file_index] = fd
        return fd

    def sync(self, file_indexes: set[int]) -> None:
        for i in file_indexes:
            fd = self._fds.get(i)
            if fd is not None:
                os.fdatasync(fd)

    def close_file(self, file_index: int) -> None:
        fd = self._fds.pop(file_index, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def verify(self, file_index: int) -> bool:
        """SHA-256 of the staged file against the manifest (runs in a worker thread)."""
        f = self.manifest.files[file_index]
        digest = hashlib.sha256()
        with self.path(file_index).open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
            os.fsync(fh.fileno())  # durable before the journal calls it verified
        return digest.hexdigest() == f.hash_sha256

    def commit_file(self, file_index: int) -> None:
        """Move one verified staged file into the install folder (atomic rename)."""
        f: FileEntry = self.manifest.files[file_index]
        src = self.path(file_index)
        dest = safe_join(self.install_dir, f.path)
        if not src.exists() and dest.exists():
            return  # renamed before a crash; the rename is the commit
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(src, f.mode)
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(src, dest)

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)
        parent = self.root.parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
