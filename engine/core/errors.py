"""The engine's errors: one exception with a typed code (the seeds' names), exit codes derived.

Codes are an enum, so a typo is a type error, not a silent branch that never matches. Codes
from outside (the backend, the daemon's wire, the patcher's manifest loader) are parsed at the
boundary with ``ErrorCode.from_wire``; an unknown one becomes the caller's default.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


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
    CONFLICT = 13


class ErrorCode(StrEnum):
    # the seeds' download service
    CDN_UNREACHABLE = "CDN_UNREACHABLE"
    CDN_LINK_GENERATION_FAILED = "CDN_LINK_GENERATION_FAILED"
    FILE_HASH_MISMATCH = "FILE_HASH_MISMATCH"
    DELTA_PATCH_APPLICATION_FAILED = "DELTA_PATCH_APPLICATION_FAILED"
    INSUFFICIENT_DISK_SPACE = "INSUFFICIENT_DISK_SPACE"
    DOWNLOAD_QUEUE_FULL = "DOWNLOAD_QUEUE_FULL"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # the backend
    AUTH_REQUIRED = "AUTH_REQUIRED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    ALREADY_UP_TO_DATE = "ALREADY_UP_TO_DATE"
    RATE_LIMITED = "RATE_LIMITED"
    BACKEND_ERROR = "BACKEND_ERROR"
    BACKEND_UNREACHABLE = "BACKEND_UNREACHABLE"
    # the seeds' library service (saves, achievements, playtime)
    SAVEGAME_VERSION_CONFLICT = "SAVEGAME_VERSION_CONFLICT"
    SAVEGAME_SLOT_NOT_FOUND = "SAVEGAME_SLOT_NOT_FOUND"
    SAVEGAME_FILE_TOO_LARGE = "SAVEGAME_FILE_TOO_LARGE"
    USER_QUOTA_EXCEEDED = "USER_QUOTA_EXCEEDED"
    ACHIEVEMENT_ALREADY_UNLOCKED = "ACHIEVEMENT_ALREADY_UNLOCKED"
    LIBRARY_ITEM_NOT_FOUND = "LIBRARY_ITEM_NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    # the seeds' library service: wishlist (3.1.4) and family sharing (1.2); the limits and
    # conflicts are the backend's names for what the seed leaves open
    GAME_NOT_FOUND_IN_WISHLIST = "GAME_NOT_FOUND_IN_WISHLIST"
    WISHLIST_LIMIT_REACHED = "WISHLIST_LIMIT_REACHED"
    FAMILY_ACCESS_RESTRICTED = "FAMILY_ACCESS_RESTRICTED"
    FAMILY_CONFLICT = "FAMILY_CONFLICT"
    FAMILY_LIMIT_REACHED = "FAMILY_LIMIT_REACHED"
    FAMILY_MEMBER_NOT_FOUND = "FAMILY_MEMBER_NOT_FOUND"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    # content (the patcher's manifest loader)
    MANIFEST_INVALID = "MANIFEST_INVALID"
    MANIFEST_CORRUPT = "MANIFEST_CORRUPT"
    MANIFEST_SCHEMA = "MANIFEST_SCHEMA"
    MANIFEST_LIMIT = "MANIFEST_LIMIT"
    MANIFEST_TOO_LARGE = "MANIFEST_TOO_LARGE"
    MANIFEST_PATH_INVALID = "MANIFEST_PATH_INVALID"
    MANIFEST_PATH_COLLISION = "MANIFEST_PATH_COLLISION"
    MANIFEST_CHUNKS_TILING = "MANIFEST_CHUNKS_TILING"
    MANIFEST_SIGNATURE_INVALID = "MANIFEST_SIGNATURE_INVALID"
    MANIFEST_KEY_INVALID = "MANIFEST_KEY_INVALID"
    MANIFEST_FORMAT_UNSUPPORTED = "MANIFEST_FORMAT_UNSUPPORTED"
    # the engine's own
    CONFIG_INVALID = "CONFIG_INVALID"
    API_MISUSE = "API_MISUSE"
    INVALID_PARAMS = "INVALID_PARAMS"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    TASK_PAUSED = "TASK_PAUSED"
    TASK_CANCELLED = "TASK_CANCELLED"
    NOT_INSTALLED = "NOT_INSTALLED"
    TARGET_NOT_EMPTY = "TARGET_NOT_EMPTY"
    PATH_CONFLICT = "PATH_CONFLICT"
    UNSAFE_PATH = "UNSAFE_PATH"
    IO_ERROR = "IO_ERROR"
    ILLEGAL_TRANSITION = "ILLEGAL_TRANSITION"
    GAME_RUNNING = "GAME_RUNNING"  # refused while the game runs (launch again, update, move...)
    GAME_BUSY = "GAME_BUSY"  # a task works on the game (installing, updating, repairing)
    GAME_DAMAGED = "GAME_DAMAGED"  # files need repair before it can start
    NO_LAUNCH_ENTRY = "NO_LAUNCH_ENTRY"  # the manifest names nothing to start
    LAUNCH_FAILED = "LAUNCH_FAILED"  # the operating system could not start it
    # the control protocol
    PARSE_ERROR = "PARSE_ERROR"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    DAEMON_UNREACHABLE = "DAEMON_UNREACHABLE"

    @classmethod
    def from_wire(cls, text: object, default: ErrorCode) -> ErrorCode:
        try:
            return cls(str(text))
        except ValueError:
            return default

    @property
    def exit_code(self) -> ExitCode:
        if self.name.startswith("MANIFEST_"):
            return ExitCode.BAD_CONTENT
        return _EXIT_BY_CODE.get(self, ExitCode.FAILED)


_EXIT_BY_CODE: dict[ErrorCode, ExitCode] = {
    ErrorCode.CONFIG_INVALID: ExitCode.USAGE,
    ErrorCode.API_MISUSE: ExitCode.USAGE,
    ErrorCode.INVALID_PARAMS: ExitCode.USAGE,
    ErrorCode.UNKNOWN_METHOD: ExitCode.USAGE,
    ErrorCode.PARSE_ERROR: ExitCode.USAGE,
    ErrorCode.INVALID_REQUEST: ExitCode.USAGE,
    ErrorCode.MESSAGE_TOO_LARGE: ExitCode.USAGE,
    ErrorCode.TASK_NOT_FOUND: ExitCode.USAGE,
    ErrorCode.TARGET_NOT_EMPTY: ExitCode.USAGE,
    ErrorCode.ILLEGAL_TRANSITION: ExitCode.USAGE,
    ErrorCode.PATH_CONFLICT: ExitCode.IO,
    ErrorCode.UNSAFE_PATH: ExitCode.IO,
    ErrorCode.IO_ERROR: ExitCode.IO,
    ErrorCode.AUTH_REQUIRED: ExitCode.AUTH,
    ErrorCode.UNAUTHENTICATED: ExitCode.AUTH,
    ErrorCode.INVALID_CREDENTIALS: ExitCode.AUTH,
    ErrorCode.PERMISSION_DENIED: ExitCode.NOT_ENTITLED,
    ErrorCode.PRODUCT_NOT_FOUND: ExitCode.NOT_ENTITLED,
    ErrorCode.VERSION_NOT_FOUND: ExitCode.NOT_ENTITLED,
    ErrorCode.INSUFFICIENT_DISK_SPACE: ExitCode.DISK_SPACE,
    ErrorCode.CDN_UNREACHABLE: ExitCode.NETWORK,
    ErrorCode.CDN_LINK_GENERATION_FAILED: ExitCode.NETWORK,
    ErrorCode.FILE_HASH_MISMATCH: ExitCode.INTEGRITY,
    ErrorCode.DELTA_PATCH_APPLICATION_FAILED: ExitCode.INTEGRITY,
    ErrorCode.BACKEND_UNREACHABLE: ExitCode.BACKEND,
    ErrorCode.BACKEND_ERROR: ExitCode.BACKEND,
    ErrorCode.RATE_LIMITED: ExitCode.BACKEND,
    ErrorCode.ALREADY_UP_TO_DATE: ExitCode.BACKEND,
    ErrorCode.DOWNLOAD_QUEUE_FULL: ExitCode.BACKEND,
    ErrorCode.DAEMON_UNREACHABLE: ExitCode.BACKEND,
    ErrorCode.TASK_PAUSED: ExitCode.INTERRUPTED,
    ErrorCode.TASK_CANCELLED: ExitCode.INTERRUPTED,
    ErrorCode.NOT_INSTALLED: ExitCode.NOT_INSTALLED,
    ErrorCode.GAME_RUNNING: ExitCode.USAGE,
    ErrorCode.GAME_BUSY: ExitCode.USAGE,
    ErrorCode.GAME_DAMAGED: ExitCode.INTEGRITY,
    ErrorCode.NO_LAUNCH_ENTRY: ExitCode.BAD_CONTENT,
    ErrorCode.LAUNCH_FAILED: ExitCode.IO,
    ErrorCode.SAVEGAME_VERSION_CONFLICT: ExitCode.CONFLICT,
    ErrorCode.SAVEGAME_SLOT_NOT_FOUND: ExitCode.USAGE,
    ErrorCode.VALIDATION_ERROR: ExitCode.USAGE,
    ErrorCode.LIBRARY_ITEM_NOT_FOUND: ExitCode.NOT_ENTITLED,
    ErrorCode.ACHIEVEMENT_ALREADY_UNLOCKED: ExitCode.BACKEND,
    ErrorCode.SAVEGAME_FILE_TOO_LARGE: ExitCode.BACKEND,
    ErrorCode.USER_QUOTA_EXCEEDED: ExitCode.BACKEND,
    ErrorCode.SERVICE_UNAVAILABLE: ExitCode.BACKEND,
    ErrorCode.GAME_NOT_FOUND_IN_WISHLIST: ExitCode.USAGE,
    ErrorCode.USER_NOT_FOUND: ExitCode.USAGE,
    ErrorCode.FAMILY_MEMBER_NOT_FOUND: ExitCode.USAGE,
    ErrorCode.FAMILY_ACCESS_RESTRICTED: ExitCode.NOT_ENTITLED,
    ErrorCode.WISHLIST_LIMIT_REACHED: ExitCode.CONFLICT,
    ErrorCode.FAMILY_CONFLICT: ExitCode.CONFLICT,
    ErrorCode.FAMILY_LIMIT_REACHED: ExitCode.CONFLICT,
}


class EngineError(Exception):
    """Every failure the engine reports; ``code`` is machine-readable, ``message`` for people."""

    def __init__(self, code: ErrorCode, message: str, *, item: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.item = item  # offending file/chunk/product, where there is one
        self.http_status = http_status  # the backend's answer, when the error is one

    @property
    def exit_code(self) -> ExitCode:
        return self.code.exit_code

    def to_error(self) -> dict[str, str | None]:
        """The control API's error object."""
        return {"code": self.code.value, "message": self.message, "item": self.item}

    def to_dict(self) -> dict[str, str | None]:
        return {"errorCode": self.code.value, "errorMessage": self.message, "itemId": self.item}
