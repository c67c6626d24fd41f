"""A small HTTP/1.1 client on asyncio streams, for the engine's small requests: the backend's
JSON API (``engine.io.backend_client``) and small CDN documents — manifests, signatures,
patches (``engine.jobs.context``).

Why our own (issue 13, first byte): aiohttp's import (~110 ms on a quick host, 0.44 s on a
slowed one; ~50 ms of it two SSL contexts built at import, the CA bundle parsed even for
plain-http sources) sat in front of every in-process install's first byte, for a handful of
small requests. What the aiohttp session did is kept: connections kept alive and reused (one
retry on a fresh connection when a reused one turns out closed before any answer byte),
redirects never followed, proxies from the environment (``http_proxy``/``https_proxy``/
``no_proxy``, as ``urllib.request`` reads them; https through a ``CONNECT`` tunnel, the
proxy's credentials from its URL), a connect timeout (connection, proxy tunnel and TLS
handshake) and a per-read timeout. Errors are ``HttpError`` (connection, protocol) and
``TimeoutError``; callers translate both.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from engine.core.httpwire import HeadError, ResponseHead
from engine.core.httpwire import parse_head as wire_parse_head

MAX_HEAD_BYTES = 64 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# retried once on a fresh connection when a kept-alive one closed before any answer byte: only
# methods a server may see twice (a POST may have been carried out: a grant made twice, a
# refresh token used twice, which the backend takes for theft)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
USER_AGENT = "launcher-engine"


class HttpError(Exception):
    """The request got no complete answer: refused or reset connection, TLS failure, a proxy
    that refused the tunnel, a malformed response."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str  # "http" | "https"
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target: path and query) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {url[:80]}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise HttpError(f"bad port in {url[:80]}") from exc
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # checked on the whole URL: a plain-http proxy is sent it as it is (urlsplit drops some
    # control characters from the parts, not from the text)
    if any(c <= " " or c == "\x7f" for c in url):
        raise HttpError("whitespace or a control character in the URL")
    return Origin(scheme, parts.hostname, port), target


@dataclass(frozen=True, slots=True)
class Proxy:
    origin: Origin
    authorization: str | None  # the Proxy-Authorization value, from the proxy URL's userinfo


def proxy_for(origin: Origin) -> Proxy | None:
    """The environment's proxy for ``origin``, read as aiohttp's ``trust_env`` read it
    (``urllib.request.getproxies`` and ``proxy_bypass``); urllib.request is imported only
    when some ``*_proxy`` variable is set."""
    if not any(k.lower().endswith("_proxy") for k in os.environ):
        return None
    import urllib.request

    url = urllib.request.getproxies().get(origin.scheme)
    if not url or urllib.request.proxy_bypass(origin.host):
        return None
    parts = urlsplit(url if "://" in url else "http://" + url)
    scheme = parts.scheme.lower()
    shown = f"{parts.scheme}://{parts.hostname or '?'}"  # never the URL's credentials
    if scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"proxy {shown} for {origin.scheme} is not an http(s) URL")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise HttpError(f"bad port in the proxy URL {shown}") from exc
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("latin-1")).decode("ascii")
    return Proxy(Origin(scheme, parts.hostname, port), auth)


def parse_head(raw: bytes) -> ResponseHead:
    """The head as the range client reads it (``engine.core.httpwire``), its errors ours."""
    try:
        return wire_parse_head(raw)
    except HeadError as exc:
        raise HttpError(str(exc)) from exc


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class Response:
    """An answer's head; its body is read with ``read`` (the connection goes back to the pool
    once the whole body is read)."""

    def __init__(self, client: HttpClient, key: tuple[str, str, int, Proxy | None],
                 conn: _Conn, head: ResponseHead, method: str) -> None:
        self._client = client
        self._key = key
        self._conn: _Conn | None = conn
        self.head = head
        self.status = head.status
        self._bodiless = method == "HEAD" or head.status in (204, 304) or head.status < 200
        self._keep_alive = head.keep_alive  # off once a body is read to the connection's end

    @property
    def content_length(self) -> int | None:
        try:
            return self.head.content_length
        except HeadError as exc:
            raise HttpError(str(exc)) from exc

    async def read(self, limit: int | None = None, too_large: Callable[[int], Exception] | None
                   = None) -> bytes:
        """The whole body; more than ``limit`` bytes raises ``too_large(limit)`` (or HttpError)."""
        conn = self._conn
        if conn is None:
            raise HttpError("the body was read already")
        self._conn = None
        ok = False
        try:
            body = b"" if self._bodiless else await self._body(conn, limit, too_large)
            ok = True
            return body
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError(f"answer cut short or malformed: {exc!r}") from exc
        except OSError as exc:  # reset, TLS failure (TimeoutError passes: the caller's to judge)
            if isinstance(exc, TimeoutError):
                raise
            raise HttpError(f"reading the answer: {exc!r}") from exc
        finally:
            if ok and self._keep_alive:
                self._client._put_back(self._key, conn)
            else:
                conn.close()

    def close(self) -> None:
        """Give up the body unread (the connection is closed, not reused)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _body(self, conn: _Conn, limit: int | None,
                    too_large: Callable[[int], Exception] | None) -> bytes:
        def over(size: int) -> None:
            if limit is not None and size > limit:
                raise too_large(limit) if too_large else HttpError(f"answer over {limit} bytes")

        read_s = self._client.read_timeout
        reader = conn.reader
        if self.head.chunked:
            parts: list[bytes] = []
            size = 0
            while True:
                async with asyncio.timeout(read_s):
                    line = await reader.readuntil(b"\r\n")
                digits = line.split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(digits):  # int() would take "-5", "0x3", "1_0"
                    raise HttpError(f"bad chunk size {digits[:20]!r}")
                n = int(digits, 16)
                if n == 0:
                    while True:  # trailers, up to the blank line
                        async with asyncio.timeout(read_s):
                            if await reader.readuntil(b"\r\n") == b"\r\n":
                                return b"".join(parts)
                size += n
                over(size)
                async with asyncio.timeout(read_s):
                    parts.append(await reader.readexactly(n))
                    if await reader.readexactly(2) != b"\r\n":
                        raise HttpError("a chunk not followed by CRLF")
        length = self.content_length
        if length is not None:
            over(length)
            parts = []
            left = length
            while left:
                async with asyncio.timeout(read_s):
                    part = await reader.read(min(left, 1 << 20))
                if not part:
                    raise HttpError(f"connection closed {left} bytes before the answer's end")
                parts.append(part)
                left -= len(part)
            return b"".join(parts)
        self._keep_alive = False  # read to EOF
        parts, size = [], 0
        while True:
            async with asyncio.timeout(read_s):
                part = await reader.read(1 << 20)
            if not part:
                return b"".join(parts)
            size += len(part)
            over(size)
            parts.append(part)


class HttpClient:
    """Kept-alive connections per (scheme, host, port, proxy), on the event loop of the first
    request (connections belong to one loop; a later loop starts a fresh pool)."""

    IDLE_PER_ORIGIN = 8

    def __init__(self, *, connect_timeout: float, read_timeout: float,
                 tls: Callable[[], ssl.SSLContext] | None = None, trust_env: bool = True) -> None:
        """``tls``: makes the context of https connections, when the first is opened (default:
        the system's CAs); ``trust_env``: proxies from the environment."""
        self.trust_env = trust_env
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._tls_factory = tls
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int, Proxy | None], list[_Conn]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = self._tls_factory() if self._tls_factory else ssl.create_default_context()
        return self._tls

    async def aclose(self) -> None:
        self._closed = True
        for group in self._idle.values():
            for conn in group:
                conn.close()
        self._idle.clear()

    def _put_back(self, key: tuple[str, str, int, Proxy | None], conn: _Conn) -> None:
        # bytes past the answer (a server that sent more than it framed) would be read as the
        # next request's answer: such a connection is closed, never reused
        unread = len(getattr(conn.reader, "_buffer", b""))
        if self._closed or unread or conn.reader.at_eof() or conn.writer.is_closing():
            conn.close()
            return
        group = self._idle.setdefault(key, [])
        group.append(conn)
        while len(group) > self.IDLE_PER_ORIGIN:
            group.pop(0).close()

    def _take(self, key: tuple[str, str, int, Proxy | None]) -> _Conn | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections of another (maybe closed) loop: not usable
            self._idle.clear()
            self._loop = loop
        group = self._idle.get(key)
        while group:
            conn = group.pop()
            # an idle connection with something to read (the server's FIN) cannot carry more
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, origin: Origin, proxy: Proxy | None) -> _Conn:
        tls = self._context() if origin.scheme == "https" else None
        async with asyncio.timeout(self.connect_timeout):
            try:
                if proxy is None:
                    reader, writer = await asyncio.open_connection(
                        origin.host, origin.port, ssl=tls,
                        server_hostname=origin.host if tls else None)
                    return _Conn(reader, writer)
                ptls = self._context() if proxy.origin.scheme == "https" else None
                reader, writer = await asyncio.open_connection(
                    proxy.origin.host, proxy.origin.port, ssl=ptls,
                    server_hostname=proxy.origin.host if ptls else None)
                conn = _Conn(reader, writer)
                if tls is None:
                    return conn  # plain http: absolute-form requests to the proxy
                try:
                    await self._tunnel(conn, origin, proxy)
                    await writer.start_tls(tls, server_hostname=origin.host)
                except BaseException:
                    conn.close()
                    raise
                return conn
            except ssl.SSLError as exc:
                raise HttpError(f"TLS with {origin.host}: {exc}") from exc
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise HttpError(f"cannot connect to {origin.host}:{origin.port}"
                                f"{' through ' + proxy.origin.host if proxy else ''}: {exc}") from exc

    async def _tunnel(self, conn: _Conn, origin: Origin, proxy: Proxy) -> None:
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        where = f"{host}:{origin.port}"
        lines = [f"CONNECT {where} HTTP/1.1", f"Host: {where}", f"User-Agent: {USER_AGENT}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await conn.writer.drain()
        head = parse_head(await _read_head(conn.reader))
        if not 200 <= head.status < 300:
            raise HttpError(f"proxy {proxy.origin.host} refused the tunnel: HTTP {head.status}")

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> Response:
        """Send the request; the answer's head (read the body with ``Response.read``)."""
        if self._closed:
            raise RuntimeError("the HTTP client has been closed")
        origin, target = split_url(url)
        proxy = proxy_for(origin) if self.trust_env else None
        key = (origin.scheme, origin.host, origin.port, proxy)
        lines = [f"{method} {url if proxy and origin.scheme == 'http' else target} HTTP/1.1",
                 f"Host: {origin.host_header}", f"User-Agent: {USER_AGENT}", "Accept: */*",
                 "Accept-Encoding: identity"]
        if proxy and origin.scheme == "http" and proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        for name, value in (headers or {}).items():
            if any(c in value for c in "\r\n"):
                raise HttpError(f"a line break in header {name}")
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        for attempt in (0, 1):
            conn = self._take(key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, proxy)
            try:
                try:
                    conn.writer.write(data)
                    async with asyncio.timeout(self.read_timeout):
                        await conn.writer.drain()
                        raw = await _read_head(conn.reader)
                        # interim answers (100 Continue, 103 Early Hints) precede the answer
                        while _interim(raw):
                            raw = await _read_head(conn.reader)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    # a kept-alive connection the server closed meanwhile: once more, fresh
                    if reused and method in _IDEMPOTENT and (
                            not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                        conn.close()
                        continue
                    raise HttpError(f"{method} {origin.host}: connection closed: {exc!r}") from exc
                except OSError as exc:
                    if isinstance(exc, TimeoutError):
                        raise
                    raise HttpError(f"{method} {origin.host}: {exc!r}") from exc
                return Response(self, key, conn, parse_head(raw), method)
            except BaseException:
                conn.close()
                raise
        raise HttpError(f"{method} {origin.host}: connection closed")  # unreachable


def _interim(raw: bytes) -> bool:
    """A 1xx head other than 101 (which this client never asks for: it ends the exchange)."""
    return raw[9:10] == b"1" and raw[9:12] != b"101" and raw.startswith(b"HTTP/1.")


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise HttpError(f"response head over {reader._limit} bytes") from exc  # type: ignore[attr-defined]
