"""HTTP/1.1 for the one request the download's data plane makes: GET a byte range of a pack over
a kept-alive connection. Pure: the request's bytes, the response head parsed, and what a
response means for the range asked (the socket loop is ``engine.io.rangeclient``).

Why our own: aiohttp's reader copies every socket read into a new ``bytes`` on the event loop
thread, which holds the GIL the decompress/hash/write threads need; a blocking worker that
``recv_into``s a reused buffer leaves the loop idle and the bytes uncopied. Only what a static
CDN answers to a Range request is understood here; anything else (a chunked body, a redirect,
a response without a length) is ``Unsupported`` and the range goes the general (aiohttp) way.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.core.sources import FailureKind

MAX_HEAD_BYTES = 64 * 1024  # a response head longer than this is not a CDN's answer
USER_AGENT = "launcher-engine"


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' or '¹' (latin-1 heads), which int()
    then refuses with a ValueError instead of the head being judged bad."""
    return text.isascii() and text.isdigit()


class Unsupported(Exception):
    """A URL or a response this client does not handle; the general client will."""


class HeadError(Exception):
    """A response head that is not HTTP/1.x (garbage, truncated, too long)."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str  # "http" | "https"
    host: str
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def key(self) -> tuple[str, str, int]:
        """Connections are kept per (scheme, host, port)."""
        return self.scheme, self.host, self.port

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unsupported(f"not an http(s) URL: {url[:80]}")
    if parts.username or parts.password:
        raise Unsupported("credentials in the URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise Unsupported(f"bad port in {url[:80]}") from exc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c in path for c in " \r\n\t"):  # urlsplit keeps them; a request line must not
        raise Unsupported("whitespace in the URL's path")
    return Target(parts.scheme, parts.hostname, port, path)


def range_request(target: Target, start: int, end: int) -> bytes:
    """GET bytes [start, end) of the target, keeping the connection alive."""
    if not 0 <= start < end:
        raise ValueError(f"empty or negative range {start}-{end}")
    return (f"GET {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            f"Range: bytes={start}-{end - 1}\r\nAccept-Encoding: identity\r\n"
            f"User-Agent: {USER_AGENT}\r\nConnection: keep-alive\r\n\r\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    version: str  # "HTTP/1.1"
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None:
            return None
        if not _digits(value):
            raise HeadError(f"bad Content-Length {value[:40]!r}")
        return int(value)

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def content_range(self) -> tuple[int, int, int | None] | None:
        """(first, last, total or None) of a ``Content-Range: bytes a-b/n``; None when absent."""
        value = self.headers.get("content-range")
        if value is None:
            return None
        unit, _, spec = value.strip().partition(" ")
        span, _, total = spec.partition("/")
        first, _, last = span.partition("-")
        if unit.lower() != "bytes" or not _digits(first) or not _digits(last):
            raise HeadError(f"bad Content-Range {value[:60]!r}")
        return int(first), int(last), int(total) if _digits(total) else None


def head_end(buf: bytes | bytearray, searched: int, end: int) -> int:
    """Where the head ends (just past its blank line) within ``buf[:end]``, or -1 while it has
    not all arrived. ``searched``: bytes already looked at, so a slowly arriving head costs no
    rescans."""
    i = buf.find(b"\r\n\r\n", max(0, searched - 3), end)
    return -1 if i < 0 else i + 4


def parse_head(raw: bytes) -> ResponseHead:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # latin-1 decodes anything; kept for the type checker
        raise HeadError("undecodable head") from exc
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if (version not in ("HTTP/1.1", "HTTP/1.0") or not _digits(code) or len(code) != 3
            or rest[3:4] not in ("", " ")):  # "HTTP/1.1 2000" is not status 200
        raise HeadError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HeadError(f"bad header line {line[:60]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return ResponseHead(version, int(code), headers)


@dataclass(frozen=True, slots=True)
class RangeRefusal:
    """Why a response cannot deliver the range: how the failure counts against the source."""
    kind: FailureKind
    detail: str
    out_of_range: bool = False


@dataclass(frozen=True, slots=True)
class RangeBody:
    """How to read a response that delivers the range: ``length`` body bytes follow the head
    (the range's first byte first: a 200 is only taken for a range starting at 0);
    ``reusable`` when the connection can take the next request once the range is read."""
    length: int
    reusable: bool


def judge_range_response(head: ResponseHead, start: int, end: int, pack: str,
                         source_id: str) -> RangeBody | RangeRefusal:
    """The same rules as the general client (``engine.io.download``): 403 → forbidden (tokens
    are refreshed), 5xx → server error, 416 → the range lies past the pack's end, a 200 to a
    range not starting at 0 → the edge ignored Range. And what aiohttp never checked: a 206 whose
    Content-Range is not the range asked is corrupt bytes from that edge."""
    what = f"bytes {start}-{end - 1} of pack {pack[:12]}"
    if head.status == 403:
        return RangeRefusal(FailureKind.FORBIDDEN, f"{source_id}: 403 for {pack[:12]}")
    if head.status == 416:
        return RangeRefusal(FailureKind.CORRUPT, f"{source_id}: HTTP 416 for {what}",
                            out_of_range=True)
    if head.status >= 500:
        return RangeRefusal(FailureKind.HTTP_5XX, f"{source_id}: HTTP {head.status}")
    if head.status == 200 and start != 0:
        return RangeRefusal(FailureKind.HTTP_5XX, f"{source_id}: ignored Range")
    if head.status not in (200, 206):
        if 300 <= head.status < 400:
            raise Unsupported(f"HTTP {head.status} (redirect)")
        return RangeRefusal(FailureKind.HTTP_5XX, f"{source_id}: HTTP {head.status}")
    if head.chunked:
        raise Unsupported("chunked body")
    length = head.content_length
    if length is None:
        raise Unsupported("no Content-Length")
    if head.status == 206:
        span = head.content_range()
        if span is None or span[0] != start or span[1] != end - 1 or length != end - start:
            got = head.headers.get("content-range", "none")
            return RangeRefusal(FailureKind.CORRUPT, f"{source_id}: asked {what}, got "
                                f"Content-Range {got[:60]} ({length} bytes)")
        return RangeBody(length, head.keep_alive)
    if length < end:  # a 200 from 0: the whole pack, which must hold the range
        return RangeRefusal(FailureKind.CORRUPT, f"{source_id}: pack {pack[:12]} is {length} "
                            f"bytes, {what} asked", out_of_range=True)
    # the rest of the pack past ``end`` is never read: the connection is closed after the range
    return RangeBody(length, head.keep_alive and length == end)
