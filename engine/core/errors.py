"""The engine's exception hierarchy: machine-readable codes (the seeds') and CLI exit codes."""

from __future__ import annotations

import errno
import os
import sqlite3
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Distinct exit codes per failure class, documented in docs/operations.md."""

    OK = 0
    FAILED = 1
    USAGE = 2
    AUTH = 3
    NOT_ENTITLED = 4
    DISK_SPACE = 5
    NETWORK = 6
    INTEGRITY = 7
    BAD_CONTENT = 8
    BACKEND = 9
    INTERRUPTED = 10
    NOT_INSTALLED = 11
    IO = 12


_EXIT_BY_CODE: dict[str, ExitCode] = {
    "CONFIG_INVALID": ExitCode.USAGE,
    "API_MISUSE": ExitCode.USAGE,
    "INVALID_PARAMS": ExitCode.USAGE,
    "TASK_NOT_FOUND": ExitCode.USAGE,
    "TARGET_NOT_EMPTY": ExitCode.USAGE,
    "PATH_CONFLICT": ExitCode.IO,
    "UNSAFE_PATH": ExitCode.IO,
    "AUTH_REQUIRED": ExitCode.AUTH,
    "UNAUTHENTICATED": ExitCode.AUTH,
    "PERMISSION_DENIED": ExitCode.NOT_ENTITLED,
    "PRODUCT_NOT_FOUND": ExitCode.NOT_ENTITLED,
    "VERSION_NOT_FOUND": ExitCode.NOT_ENTITLED,
    "INSUFFICIENT_DISK_SPACE": ExitCode.DISK_SPACE,
    "CDN_UNREACHABLE": ExitCode.NETWORK,
    "CDN_LINK_GENERATION_FAILED": ExitCode.NETWORK,
    "FILE_HASH_MISMATCH": ExitCode.INTEGRITY,
    "MANIFEST_INVALID": ExitCode.BAD_CONTENT,
    "BACKEND_UNREACHABLE": ExitCode.BACKEND,
    "BACKEND_ERROR": ExitCode.BACKEND,
    "RATE_LIMITED": ExitCode.BACKEND,
    "TASK_PAUSED": ExitCode.INTERRUPTED,
    "TASK_CANCELLED": ExitCode.INTERRUPTED,
    "NOT_INSTALLED": ExitCode.NOT_INSTALLED,
    "IO_ERROR": ExitCode.IO,
    "DELTA_PATCH_APPLICATION_FAILED": ExitCode.INTEGRITY,
}


class EngineError(Exception):
    """Every failure the engine reports; ``code`` is machine-readable, ``message`` for people."""

    def __init__(self, code: str, message: str, *, item: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.item = item  # offending file/chunk/product, where there is one

    @property
    def exit_code(self) -> ExitCode:
        if self.code.startswith("MANIFEST_"):
            return ExitCode.BAD_CONTENT
        return _EXIT_BY_CODE.get(self.code, ExitCode.FAILED)

    def to_error(self) -> dict[str, str | None]:
        """The control API's error object."""
        return {"code": self.code, "message": self.message, "item": self.item}

    def to_dict(self) -> dict[str, str | None]:
        return {"errorCode": self.code, "errorMessage": self.message, "itemId": self.item}


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
        return EngineError("INSUFFICIENT_DISK_SPACE",
                           f"disk full while {what} ({detail}); free some space"
                           + (f" on the filesystem of {where}" if where is not None else ""),
                           item=item)
    return EngineError("IO_ERROR", f"{what}: {detail}", item=item)
