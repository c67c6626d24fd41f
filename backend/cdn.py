"""CDN: signed ``cdnSources`` for a user and product, and the backend's own CDN route.

``GET /cdn/{path}`` serves files below the store's ``cdn/`` folder after checking the signed
token in the query string (either mode of ``backend.signing``): an expired, tampered or
other-product token gets 403 in the error format, never content. Single byte ranges are served
as 206 with ``Content-Range``; an unsatisfiable range gets 416. Files are streamed from disk in
large blocks by a worker thread (constant memory).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from backend.config import EdgeConfig, EdgeList
from backend.errors import (
    NotFound,
    PermissionDenied,
    RangeNotSatisfiable,
    RateLimited,
    ServiceUnavailable,
)
from backend.observability import METRICS
from backend.ratelimit import Limiter
from backend.signing import TokenRejected, parse_query, sign, verify

READ_BLOCK = 1024 * 1024
_RANGE = re.compile(r"\Abytes=(\d*)-(\d*)\Z")


@dataclass(frozen=True, slots=True)
class CdnSourceInfo:
    id: str
    base_url: str
    query: str
    expires_at: datetime
    priority: int
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "baseUrl": self.base_url, "query": self.query,
                "expiresAt": self.expires_at, "priority": self.priority, "mode": self.mode}


def cdn_sources(key: bytes, edges: tuple[EdgeConfig, ...], resolve: Any, product_id: str,
                user_id: str, now: float, ttl: int) -> list[dict[str, Any]]:
    """Pure: one signed source per configured edge, ordered by priority."""
    expires = int(now) + ttl
    out = []
    for edge in sorted(edges, key=lambda e: (e.priority, e.id)):
        signed = sign(key, edge.mode, product_id, user_id, expires)
        out.append(CdnSourceInfo(edge.id, resolve(edge), signed.query,
                                 datetime.fromtimestamp(expires, UTC), edge.priority,
                                 edge.mode.value).to_dict())
    return out


class CdnLinkGenerationFailed(ServiceUnavailable):
    """The download seed's ``CDN_LINK_GENERATION_FAILED`` (503: nothing was stored)."""

    code = "CDN_LINK_GENERATION_FAILED"
    title = "CDN link generation failed"


def issue_sources(key: bytes, edges: EdgeList, limiter: Limiter, product_id: str,
                  user_id: str, ttl: int) -> list[dict[str, Any]]:
    """Rate-limited per user (token bucket): 429 with Retry-After when exhausted."""
    return _issue(limiter.check(user_id), key, edges, product_id, user_id, ttl)


async def aissue_sources(key: bytes, edges: EdgeList, limiter: Limiter, product_id: str,
                         user_id: str, ttl: int) -> list[dict[str, Any]]:
    """``issue_sources`` for async routes (the bucket asked without blocking the loop)."""
    return _issue(await limiter.acheck(user_id), key, edges, product_id, user_id, ttl)


def _issue(wait: float, key: bytes, edges: EdgeList, product_id: str, user_id: str,
           ttl: int) -> list[dict[str, Any]]:
    if wait > 0:
        METRICS.inc("launcher_cdn_token_rate_limited_total")
        raise RateLimited("too many CDN token requests; retry later", wait,
                          code="CDN_TOKEN_RATE_LIMITED")
    sources = cdn_sources(key, edges.current(), edges.resolve_url, product_id, user_id,
                          time.time(), ttl)
    if not sources:  # no edge configured (an empty cdn-edges.json): nothing to download from
        raise CdnLinkGenerationFailed("no CDN edge is configured; retry later")
    METRICS.inc("launcher_cdn_tokens_issued_total")
    return sources


# -- byte ranges (pure) --------------------------------------------------------------------------


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end_exclusive) of a single ``bytes=`` range, None to send the whole file.

    Multi-range and malformed headers are ignored (RFC 9110 allows serving 200). Raises
    ``RangeNotSatisfiable`` when the range starts past the end of the file.
    """
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable(f"empty suffix range for a {size}-byte file",
                                      headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start} but the file has {size} bytes",
                                  headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def _file_chunks(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
    try:
        pos = start
        while pos < end:
            n = min(READ_BLOCK, end - pos)
            data = await anyio.to_thread.run_sync(os.pread, fd, n, pos)
            if not data:
                break
            pos += len(data)
            yield data
    finally:
        os.close(fd)


def file_response(request: Request, path: Path, st: os.stat_result) -> Response:
    size = st.st_size
    etag = f'"{st.st_mtime_ns:x}-{size:x}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    rng = parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if rng is not None and if_range is not None and if_range != etag:
        rng = None
    start, end = rng if rng is not None else (0, size)
    headers["Content-Length"] = str(end - start)
    status = 200
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers,
                        media_type="application/octet-stream")
    return StreamingResponse(_file_chunks(path, start, end), status_code=status, headers=headers,
                             media_type="application/octet-stream")


def cdn_router(cdn_root: Path, key_of: Any) -> APIRouter:
    """The CDN route; ``key_of(request)`` returns the CDN signing key."""
    router = APIRouter(tags=["cdn"])
    root = cdn_root.resolve()

    @router.api_route(
        "/cdn/{path:path}", methods=["GET", "HEAD"], include_in_schema=True,
        summary="Signed CDN download (HTTP Range supported)",
        responses={200: {"content": {"application/octet-stream": {}}},
                   206: {"description": "Partial content"},
                   403: {"description": "Missing, expired, tampered or other-product token"},
                   404: {"description": "No such file"},
                   416: {"description": "Range not satisfiable"}},
        response_class=Response,
    )
    async def cdn_get(path: str, request: Request) -> Response:
        try:
            verify(key_of(request), path, parse_query(request.url.query), time.time())
        except TokenRejected as exc:
            raise PermissionDenied(str(exc), code=f"CDN_{exc.reason}") from exc
        full = (root / path).resolve()
        if not full.is_relative_to(root):
            raise PermissionDenied("path escapes the CDN root", code="CDN_BAD_PATH")
        try:
            st = full.stat()
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise NotFound(f"no such file {path!r}", code="CDN_FILE_NOT_FOUND")
        return file_response(request, full, st)

    return router
