"""Local reuse for updates and repairs (runs in worker threads): copy verified chunks from the
current install into staged files, clone whole files where the filesystem can (reflinks), apply
binary patches. Every reused byte is checked (BLAKE3 per chunk) before it is trusted.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections import defaultdict
from pathlib import Path

import blake3

from engine.core.errors import EngineError
from engine.core.updateplan import LocalCopy
from engine.io.fsops import safe_join
from engine.io.staging import Staging

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def clone_file(src: Path, dest: Path) -> bool:
    """Copy-on-write clone (btrfs, XFS, bcachefs…): no data written. False where unsupported."""
    try:
        with src.open("rb") as s, dest.open("wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                         errno.EBADF, errno.EPERM):
            dest.unlink(missing_ok=True)
            return False
        raise


def copy_or_clone(src: Path, dest: Path) -> int:
    """Whole-file copy; returns bytes actually written (0 when cloned)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if clone_file(src, dest):
        return 0
    shutil.copyfile(src, dest)
    return dest.stat().st_size


def copy_chunks(install_dir: Path, staging: Staging, copies: list[LocalCopy]) -> tuple[list[LocalCopy], int]:
    """Copy chunks from installed files into staged files. Returns (copies whose source bytes
    did not match their BLAKE3 or could not be read — to be fetched instead, bytes written)."""
    by_source: dict[str, list[LocalCopy]] = defaultdict(list)
    for c in copies:
        by_source[c.source_path].append(c)
    failed: list[LocalCopy] = []
    written = 0
    for source, items in by_source.items():
        try:
            fd = os.open(safe_join(install_dir, source), os.O_RDONLY | os.O_NOFOLLOW)
        except (OSError, EngineError):  # missing, or a link: fetched instead, never followed
            failed.extend(items)
            continue
        try:
            for c in sorted(items, key=lambda x: x.source_offset):
                data = os.pread(fd, c.size, c.source_offset)
                if len(data) != c.size or blake3.blake3(data).hexdigest() != c.chunk_id:
                    failed.append(c)
                    continue
                for w in c.writes:
                    # through the held fd: a cancel may close staging while this thread writes
                    staging.pwrite(w.file_index, data, w.file_offset)
                    written += c.size
        finally:
            os.close(fd)
    return failed, written
