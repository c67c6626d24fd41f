"""The engine's exception hierarchy: machine-readable codes (the seeds') and CLI exit codes."""

from __future__ import annotations

from enum import IntEnum


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
    "TASK_NOT_FOUND": ExitCode.USAGE,
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
