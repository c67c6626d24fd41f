"""The backend's exception hierarchy and the seeds' error envelope.

Domain code raises ``ApiError`` subclasses carrying the seed's machine-readable code; the app's
exception handlers (``backend.app``) turn every error, including FastAPI's own 404/405/422 and
unexpected exceptions, into one body shape::

    {"errors": [{"status": "403", "code": "PERMISSION_DENIED", "title": "...", "detail": "...",
                 "source": {"pointer": "/data/attributes/productId"}}]}
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base of every error the API reports; ``status`` is the HTTP status."""

    status = 500
    code = "INTERNAL_ERROR"
    title = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        pointer: str | None = None,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if title is not None:
            self.title = title
        self.source: dict[str, str] = {}
        if pointer is not None:
            self.source["pointer"] = pointer
        if parameter is not None:
            self.source["parameter"] = parameter
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return error_object(self.status, self.code, self.title, self.detail, self.source)


class ValidationFailed(ApiError):
    status = 422
    code = "VALIDATION_ERROR"
    title = "Invalid request"


class BadRequest(ApiError):
    status = 400
    code = "VALIDATION_ERROR"
    title = "Bad request"


class Unauthenticated(ApiError):
    status = 401
    code = "UNAUTHENTICATED"
    title = "Authentication required"

    def __init__(self, detail: str, **kw: Any) -> None:
        headers = kw.pop("headers", None) or {"WWW-Authenticate": "Bearer"}
        super().__init__(detail, headers=headers, **kw)


class PermissionDenied(ApiError):
    status = 403
    code = "PERMISSION_DENIED"
    title = "Permission denied"


class NotFound(ApiError):
    status = 404
    code = "NOT_FOUND"
    title = "Not found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "METHOD_NOT_ALLOWED"
    title = "Method not allowed"


class Conflict(ApiError):
    status = 409
    code = "CONFLICT"
    title = "Conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    title = "Payload too large"


class RangeNotSatisfiable(ApiError):
    status = 416
    code = "RANGE_NOT_SATISFIABLE"
    title = "Range not satisfiable"


class QuotaExceeded(ApiError):
    status = 422
    code = "USER_QUOTA_EXCEEDED"
    title = "Quota exceeded"


class RateLimited(ApiError):
    status = 429
    code = "RATE_LIMITED"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: float, **kw: Any) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(detail, headers={"Retry-After": str(seconds)}, **kw)
        self.retry_after = seconds


class ServiceUnavailable(ApiError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    title = "Service unavailable"


STATUS_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("VALIDATION_ERROR", "Bad request"),
    401: ("UNAUTHENTICATED", "Authentication required"),
    403: ("PERMISSION_DENIED", "Permission denied"),
    404: ("NOT_FOUND", "Not found"),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed"),
    409: ("CONFLICT", "Conflict"),
    413: ("PAYLOAD_TOO_LARGE", "Payload too large"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Unsupported media type"),
    416: ("RANGE_NOT_SATISFIABLE", "Range not satisfiable"),
    422: ("VALIDATION_ERROR", "Invalid request"),
    429: ("RATE_LIMITED", "Too many requests"),
    500: ("INTERNAL_ERROR", "Internal server error"),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable"),
}


def error_object(
    status: int, code: str, title: str, detail: str, source: dict[str, str] | None = None
) -> dict[str, Any]:
    obj: dict[str, Any] = {"status": str(status), "code": code, "title": title, "detail": detail}
    if source:
        obj["source"] = source
    return obj


def error_body(*errors: dict[str, Any]) -> dict[str, Any]:
    return {"errors": list(errors)}


def default_error(status: int, detail: str) -> dict[str, Any]:
    code, title = STATUS_DEFAULTS.get(status, ("HTTP_ERROR", "HTTP error"))
    return error_object(status, code, title, detail)
