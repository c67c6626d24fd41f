"""The engine's own HTTP/1.1 client (issue 13, first byte: aiohttp left the backend client and
the small-document fetch): proxies from the environment (absolute-form for http, a CONNECT
tunnel for https, credentials from the proxy URL, ``no_proxy`` honoured), TLS checked against
the trust store, timeouts and refusals translated to the same codes as before, kept-alive
connections reused and a stale one replaced, chunked answers read, size limits kept."""

from __future__ import annotations

import asyncio
import base64
import ssl
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.core.errors import EngineError, ErrorCode
from engine.core.sources import CdnSource, FailureKind
from engine.io.backend_client import BackendClient
from engine.io.httpclient import HttpClient
from engine.io.rangeclient import FetchFailed
from engine.jobs.context import _get_small
from tests.integration.test_rangeclient import self_signed

PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


class Proxy:
    """A forward proxy: absolute-form requests and CONNECT tunnels, each request head kept."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            self.heads.append(head)
            method, target, _ = head.split("\r\n", 1)[0].split(" ")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_r, up_w = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                first = b""
            else:
                rest = target.split("://", 1)[1]
                hostport = rest.split("/", 1)[0]
                host, port = hostport.rsplit(":", 1)
                up_r, up_w = await asyncio.open_connection(host, int(port))
                first = head.encode("latin-1")
            up_w.write(first)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _doc(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path_qs, "scheme": request.scheme})


@pytest.fixture
async def backend() -> AsyncIterator[tuple[web.AppRunner, int]]:
    app = web.Application()
    app.router.add_get("/api/v1/doc", _doc)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    yield runner, port
    await runner.cleanup()


async def test_backend_calls_go_through_the_environments_proxy(
        backend: tuple[web.AppRunner, int], monkeypatch: pytest.MonkeyPatch) -> None:
    _, port = backend
    proxy = Proxy()
    pport = await proxy.start()
    monkeypatch.setenv("HTTP_PROXY", f"http://us%65r:p%40ss@127.0.0.1:{pport}")
    client = BackendClient(f"http://127.0.0.1:{port}")
    try:
        assert await client.call("GET", "/api/v1/doc", auth=False, params={"q": "a b"}) == \
            {"path": "/api/v1/doc?q=a+b", "scheme": "http"}
        assert len(proxy.heads) == 1
        first = proxy.heads[0].split("\r\n")
        assert first[0] == f"GET http://127.0.0.1:{port}/api/v1/doc?q=a+b HTTP/1.1"
        assert f"Proxy-Authorization: Basic {base64.b64encode(b'user:p@ss').decode()}" in first
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await client.call("GET", "/api/v1/doc", auth=False)
        assert len(proxy.heads) == 1  # bypassed
    finally:
        await client.aclose()
        await proxy.close()


async def test_https_through_a_tunnel_checks_the_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path, "backend")
    other, _ = self_signed(tmp_path, "impostor")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/api/v1/doc", _doc)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    proxy = Proxy()
    pport = await proxy.start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{pport}")
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        client = BackendClient(f"https://127.0.0.1:{port}")
        try:
            assert (await client.call("GET", "/api/v1/doc", auth=False))["scheme"] == "https"
        finally:
            await client.aclose()
        assert proxy.heads[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n")
        monkeypatch.setenv("SSL_CERT_FILE", str(other))  # a certificate nobody vouches for
        client = BackendClient(f"https://127.0.0.1:{port}")
        try:
            with pytest.raises(EngineError) as refused:
                await client.call("GET", "/api/v1/doc", auth=False)
            assert refused.value.code == ErrorCode.BACKEND_UNREACHABLE
            assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message
        finally:
            await client.aclose()
    finally:
        await proxy.close()
        await runner.cleanup()


class Scripted:
    """A raw HTTP/1.1 server answering each request with the next scripted bytes (None: say
    nothing), closing the connection after an answer when told."""

    def __init__(self, answers: list[tuple[bytes | None, bool]]) -> None:
        self.answers = answers
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                answer, close = self.answers.pop(0)
                if answer is None:
                    await asyncio.sleep(30)
                    return
                writer.write(answer)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@asynccontextmanager
async def scripted_backend(answers: list[tuple[bytes | None, bool]],
                           **client_args: Any) -> AsyncIterator[tuple[Scripted, BackendClient]]:
    """A ``Scripted`` server and a backend client of it, both closed on the way out."""
    server = Scripted(answers)
    port = await server.start()
    client = BackendClient(f"http://127.0.0.1:{port}", **client_args)
    try:
        yield server, client
    finally:
        await client.aclose()
        server.close()


def ok(body: bytes, *extra: str) -> bytes:
    head = "\r\n".join(["HTTP/1.1 200 OK", "Content-Type: application/json",
                        f"Content-Length: {len(body)}", *extra])
    return head.encode() + b"\r\n\r\n" + body


async def test_a_stale_kept_alive_connection_is_replaced_and_chunks_are_read() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"6\r\n{\"a\": \r\n2;x=y\r\n1}\r\n0\r\n\r\n")
    async with scripted_backend([(ok(b'{"n": 1}'), True),  # closed after answering, unsaid
                                 (chunked, False), (ok(b'{"n": 3}'), False)]) as (server, client):
        assert await client.call("POST", "/x", auth=False, json={"k": "ü"}) == {"n": 1}
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        assert await client.call("GET", "/y", auth=False) == {"a": 1}
        assert await client.call("GET", "/z", auth=False) == {"n": 3}
    assert server.connections == 2  # the second and third requests shared one connection
    assert server.requests[0].endswith(b'\r\n\r\n{"k": "\\u00fc"}')
    assert b"Content-Type: application/json" in server.requests[0]


async def test_a_silent_backend_or_none_is_unreachable() -> None:
    async with scripted_backend([(None, False)], timeout=0.3) as (_, client):
        with pytest.raises(EngineError) as silent:
            await client.call("GET", "/api/v1/anything", auth=False)
        assert silent.value.code == ErrorCode.BACKEND_UNREACHABLE
        assert "TimeoutError" in silent.value.message
    client = BackendClient("http://127.0.0.1:9", timeout=5)  # nothing listens there
    try:
        with pytest.raises(EngineError) as refused:
            await client.call("GET", "/api/v1/anything", auth=False)
        assert refused.value.code == ErrorCode.BACKEND_UNREACHABLE
    finally:
        await client.aclose()


async def test_small_documents_keep_their_failure_kinds() -> None:
    """403 → forbidden (tokens refreshed), a silence → stall, a document over its limit →
    MANIFEST_TOO_LARGE whether its length is announced or not, a cut answer → reset."""
    big = b"x" * 2000
    server = Scripted([
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", False),
        (ok(big), False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + big + b"\r\n0\r\n\r\n",
         False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", True),
        (ok(b"signed bytes"), False),
        (None, False),
    ])
    port = await server.start()
    http = HttpClient(connect_timeout=5, read_timeout=0.3, trust_env=False)
    ctx: Any = types.SimpleNamespace(http=http)
    source = CdnSource("edge", f"http://127.0.0.1:{port}/cdn/", "", 1e12, 0)
    try:
        with pytest.raises(FetchFailed) as forbidden:
            await _get_small(ctx, source, "g/manifests/1.sig", 1000)
        assert forbidden.value.kind is FailureKind.FORBIDDEN
        for _ in range(2):
            with pytest.raises(EngineError) as large:
                await _get_small(ctx, source, "g/manifests/1.manifest", 1000)
            assert large.value.code == ErrorCode.MANIFEST_TOO_LARGE
        with pytest.raises(FetchFailed) as cut:
            await _get_small(ctx, source, "g/manifests/1.manifest", 1000)
        assert cut.value.kind is FailureKind.RESET
        assert await _get_small(ctx, source, "g/manifests/1.manifest", 1000) == b"signed bytes"
        with pytest.raises(FetchFailed) as stalled:
            await _get_small(ctx, source, "g/manifests/1.manifest", 1000)
        assert stalled.value.kind is FailureKind.STALL
    finally:
        await http.aclose()
        server.close()
    assert server.requests[0].startswith(b"GET /cdn/g/manifests/1.sig HTTP/1.1\r\n")
