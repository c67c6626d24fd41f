"""The data plane's HTTP/1.1 rules, without sockets: request bytes, head parsing, and what a
response means for the range asked."""

from __future__ import annotations

import pytest

from engine.core.httpwire import (
    HeadError,
    RangeBody,
    RangeRefusal,
    Unsupported,
    head_end,
    judge_range_response,
    parse_head,
    parse_target,
    range_request,
)
from engine.core.sources import FailureKind

PACK = "ab" * 32


def head(status: int, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def judge(raw: bytes, start: int = 100, end: int = 200) -> RangeBody | RangeRefusal:
    return judge_range_response(parse_head(raw), start, end, PACK, "edge")


def test_targets_and_the_request_line() -> None:
    t = parse_target("https://cdn.example:443/p/packs/x.pack?md5=a&expires=1")
    assert (t.scheme, t.host, t.port, t.path) == ("https", "cdn.example", 443,
                                                  "/p/packs/x.pack?md5=a&expires=1")
    assert t.host_header == "cdn.example"
    assert parse_target("http://127.0.0.1:8080/a").host_header == "127.0.0.1:8080"
    assert parse_target("http://[::1]:81/a").host_header == "[::1]:81"
    assert range_request(parse_target("http://h:81/a?b=1"), 10, 20) == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: h:81\r\nRange: bytes=10-19\r\n"
        b"Accept-Encoding: identity\r\nUser-Agent: launcher-engine\r\n"
        b"Connection: keep-alive\r\n\r\n")
    for bad in ("ftp://h/a", "file:///etc/passwd", "http://u:p@h/a", "http://h/a b",
                "http://h:99999/a", "http:///a"):
        with pytest.raises(Unsupported):
            parse_target(bad)
    with pytest.raises(ValueError):
        range_request(t, 5, 5)


def test_head_parsing() -> None:
    raw = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    assert head_end(raw + b"body", 0, len(raw) + 4) == len(raw)
    assert head_end(raw[:-1], 0, len(raw) - 1) == -1
    assert head_end(raw, len(raw) - 2, len(raw)) == len(raw)  # a terminator split over reads
    h = parse_head(raw)
    assert (h.status, h.content_length, h.headers["x-a"], h.keep_alive) == (206, 100, "1, 2", True)
    assert not parse_head(b"HTTP/1.0 200 OK\r\n\r\n").keep_alive
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n").keep_alive
    assert not parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").keep_alive
    for bad in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", b"HTTP/1.1 200 OK\r\n x: y\r\n\r\n",
                b"HTTP/1.1 2000 OK\r\n\r\n"):
        with pytest.raises(HeadError):
            parse_head(bad)
    with pytest.raises(HeadError):
        _ = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n").content_length


def test_what_a_response_means_for_the_range() -> None:
    assert judge(head(206, Content_Length="100", Content_Range="bytes 100-199/5000")) == \
        RangeBody(100, True)
    assert judge(head(206, Content_Length="100", Content_Range="bytes 100-199/*",
                      Connection="close")) == RangeBody(100, False)
    # a 200 is the whole pack: taken only for a range from 0, reused only when it ends there
    assert judge(head(200, Content_Length="500"), 0, 200) == RangeBody(500, False)
    assert judge(head(200, Content_Length="200"), 0, 200) == RangeBody(200, True)
    short = judge(head(200, Content_Length="150"), 0, 200)
    assert isinstance(short, RangeRefusal) and short.out_of_range
    cases = {
        head(403): (FailureKind.FORBIDDEN, False),
        head(503): (FailureKind.HTTP_5XX, False),
        head(416): (FailureKind.CORRUPT, True),
        head(200, Content_Length="5000"): (FailureKind.HTTP_5XX, False),  # Range ignored
        head(404): (FailureKind.HTTP_5XX, False),
        # an edge answering another span than asked: its bytes are not the range's
        head(206, Content_Length="100", Content_Range="bytes 0-99/5000"): (FailureKind.CORRUPT, False),
        head(206, Content_Length="99", Content_Range="bytes 100-199/5000"): (FailureKind.CORRUPT, False),
        head(206, Content_Length="100"): (FailureKind.CORRUPT, False),
    }
    for raw, (kind, out_of_range) in cases.items():
        verdict = judge(raw)
        assert isinstance(verdict, RangeRefusal), raw
        assert (verdict.kind, verdict.out_of_range) == (kind, out_of_range), raw
        assert "edge" in verdict.detail
    with pytest.raises(HeadError):
        judge(head(206, Content_Length="100", Content_Range="items 1-2/3"))
    # what the general client handles instead
    for raw in (head(206, Transfer_Encoding="chunked", Content_Range="bytes 100-199/5000"),
                head(206, Content_Range="bytes 100-199/5000"), head(302, Location="/elsewhere")):
        with pytest.raises(Unsupported):
            judge(raw)
