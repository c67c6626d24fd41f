"""The engine's HTTP/1.1 client against a raw server that misbehaves in the ways a review found
(session 23): a POST is never sent twice, interim 1xx answers never shift later answers onto
the wrong request, malformed chunk framing is a protocol error (BACKEND_UNREACHABLE) rather than
a bare ValueError, and neither a proxy's password nor a line break in a URL gets anywhere."""

from __future__ import annotations

import asyncio

import pytest

from engine.core.errors import EngineError, ErrorCode
from engine.io.backend_client import BackendClient
from engine.io.httpclient import HttpClient, HttpError
from tests.integration.test_startup_httpclient import (  # noqa: F401  (an autouse fixture)
    Scripted,
    _no_proxy_env,
    ok,
    scripted_backend,
)


async def test_a_post_on_a_connection_closed_unanswered_is_not_sent_again() -> None:
    """The server may have carried the POST out (a grant, a refresh token spent) before the
    connection closed: the client reports the failure instead of repeating it."""
    async with scripted_backend([
            (ok(b'{"n": 1}'), False),
            (b"", True),  # reads the POST, closes without a byte of answer
            (ok(b'{"n": 2}'), False),  # what a repeated POST would get
    ]) as (server, client):
        assert await client.call("GET", "/api/v1/ping", auth=False) == {"n": 1}
        with pytest.raises(EngineError) as failed:
            await client.call("POST", "/api/v1/download/tasks", auth=False, json={})
        assert failed.value.code == ErrorCode.BACKEND_UNREACHABLE
    posts = [r for r in server.requests if r.startswith(b"POST ")]
    assert len(posts) == 1, server.requests


async def test_a_get_on_a_connection_closed_unanswered_is_sent_again_once() -> None:
    async with scripted_backend([(ok(b'{"n": 1}'), False), (b"", True),
                                 (ok(b'{"n": 2}'), False)]) as (server, client):
        assert await client.call("GET", "/a", auth=False) == {"n": 1}
        assert await client.call("GET", "/b", auth=False) == {"n": 2}
    assert [r.split(b" ")[1] for r in server.requests] == [b"/a", b"/b", b"/b"]


async def test_interim_answers_are_skipped_and_never_shift_the_next_answer() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    async with scripted_backend([(early + ok(b'{"n": 1}'), False),
                                 (ok(b'{"n": 2}'), False)]) as (_, client):
        assert await client.call("GET", "/first", auth=False) == {"n": 1}
        assert await client.call("GET", "/second", auth=False) == {"n": 2}


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("answer", [
    CHUNKED + b"-5\r\nabc",  # a negative size: int() takes it, readexactly() raised ValueError
    CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n",
    CHUNKED + b"3\r\nabcXY0\r\n\r\n",  # no CRLF after the chunk's bytes
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",  # a status code of four digits
])
async def test_malformed_framing_is_a_protocol_error(answer: bytes) -> None:
    async with scripted_backend([(answer, True)]) as (_, client):
        with pytest.raises(EngineError) as failed:
            await client.call("GET", "/x", auth=False)
        assert failed.value.code == ErrorCode.BACKEND_UNREACHABLE


async def test_a_proxy_password_is_never_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "socks5h://alice:S3cret@proxy.corp:1080")
    client = BackendClient("https://backend.invalid")
    try:
        with pytest.raises(EngineError) as failed:
            await client.call("GET", "/api/v1/ping", auth=False)
        assert failed.value.code == ErrorCode.BACKEND_UNREACHABLE
        assert "socks5h://proxy.corp" in failed.value.message
        assert "S3cret" not in failed.value.message and "alice" not in failed.value.message
    finally:
        await client.aclose()


@pytest.mark.parametrize("path", ["/api/v1/x\r\nX-Injected: 1", "/api/v1/x?a=1\r\nX-Injected: 1"])
async def test_a_line_break_in_a_url_is_refused_before_anything_is_sent(
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    server = Scripted([(ok(b"{}"), False)])
    port = await server.start()
    # through a plain-http proxy the URL itself is the request line
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    client = HttpClient(connect_timeout=2, read_timeout=2)
    try:
        with pytest.raises(HttpError, match="control character"):
            await client.request("GET", "http://backend.example" + path)
        await asyncio.sleep(0.05)
    finally:
        await client.aclose()
        server.close()
    assert server.requests == []
