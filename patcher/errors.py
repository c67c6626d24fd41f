"""One exception hierarchy for the patcher, with machine-readable codes matching the seeds."""

from __future__ import annotations


class PatcherError(Exception):
    """Base of every error the patcher raises; ``code`` is machine-readable."""

    code = "PATCHER_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ManifestError(PatcherError):
    """A manifest was refused; ``field`` names the offending part (e.g. ``files[3].path``)."""

    code = "MANIFEST_INVALID"

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", code=code)
        self.field = field


class DeltaError(PatcherError):
    """A binary patch could not be built or applied (wrong input/output hash, corrupt patch)."""

    code = "DELTA_PATCH_APPLICATION_FAILED"


class StoreError(PatcherError):
    """The content store is missing data or is inconsistent."""

    code = "STORE_ERROR"


class PublishError(PatcherError):
    """A build folder cannot be published (symlinks, unreadable files, bad metadata)."""

    code = "PUBLISH_FAILED"
