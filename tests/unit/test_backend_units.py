"""Pure parts of the backend: URL signing, ranges, token bucket, pagination, update choice."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.cdn import parse_range
from backend.config import EdgeConfig
from backend.downloads import TaskStateConflict, next_status
from backend.errors import RangeNotSatisfiable
from backend.jsonapi import paginate
from backend.ratelimit import RateLimiter
from backend.signing import (
    SigningMode,
    TokenRejected,
    nginx_secret,
    safe_relpath,
    sign,
    sign_blob_token,
    verify,
    verify_blob_token,
)

KEY = b"k" * 32
USER = "0b7c1f44-7a53-4c4e-9a57-1e0d2f0c9d11"
NOW = 1_700_000_000


@pytest.mark.parametrize("mode", list(SigningMode))
def test_sign_verify_round_trip(mode: SigningMode) -> None:
    q = dict(parse_qsl(sign(KEY, mode, "game", USER, NOW + 60).query))
    assert verify(KEY, "game/packs/abc.pack", q, NOW) == USER
    with pytest.raises(TokenRejected) as exc:
        verify(KEY, "game/packs/abc.pack", q, NOW + 61)
    assert exc.value.reason == "TOKEN_EXPIRED"
    with pytest.raises(TokenRejected):
        verify(KEY, "other/packs/abc.pack", q, NOW)
    with pytest.raises(TokenRejected):
        verify(b"x" * 32, "game/packs/abc.pack", q, NOW)
    with pytest.raises(TokenRejected):
        verify(KEY, "game/packs/abc.pack", {**q, "user": "someone"}, NOW)


def test_nginx_mode_matches_secure_link_md5() -> None:
    """What nginx computes: base64url(md5("$secure_link_expires $product/ $arg_user SECRET"))."""
    q = dict(parse_qsl(sign(KEY, SigningMode.NGINX, "game", USER, NOW).query))
    raw = f"{NOW} game/ {USER} {nginx_secret(KEY)}".encode()
    expected = base64.urlsafe_b64encode(hashlib.md5(raw).digest()).rstrip(b"=").decode()
    assert q == {"expires": str(NOW), "user": USER, "md5": expected}
    assert KEY.hex() not in nginx_secret(KEY)


@given(st.text(min_size=1, max_size=40))
def test_safe_relpath_never_escapes(path: str) -> None:
    try:
        out = safe_relpath(path)
    except TokenRejected:
        return
    parts = out.split("/")
    assert ".." not in parts and "" not in parts and not out.startswith("/")


@pytest.mark.parametrize("path", ["", "/etc/passwd", "game/../x", "game//x", "game/./x", "game",
                                  "game\\x", "game/x\x00"])
def test_safe_relpath_rejects(path: str) -> None:
    with pytest.raises(TokenRejected):
        safe_relpath(path)


def test_blob_tokens() -> None:
    t = sign_blob_token(KEY, "save-dl", "save-1", USER, NOW + 10)
    assert verify_blob_token(KEY, t, "save-dl", NOW) == ("save-1", USER)
    for bad, now in ((t, NOW + 11), (t + "x", NOW), ("garbage", NOW), ("a.b", NOW)):
        with pytest.raises(TokenRejected):
            verify_blob_token(KEY, bad, "save-dl", now)
    with pytest.raises(TokenRejected):
        verify_blob_token(KEY, t, "other-purpose", NOW)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-9", (0, 10)), ("bytes=5-", (5, 100)), ("bytes=-10", (90, 100)),
    ("bytes=-500", (0, 100)), ("bytes=90-500", (90, 100)), ("bytes=0-0,5-9", None),
    ("items=0-1", None), ("bytes=9-3", None), ("bytes=-", None), ("bytes=abc", None),
])
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as exc:
        parse_range(header, 100)
    assert exc.value.headers["Content-Range"] == "bytes */100"


def test_token_bucket() -> None:
    now = [0.0]
    rl = RateLimiter(capacity=2, rate=1.0, clock=lambda: now[0])
    assert rl.check("a") == 0 and rl.check("a") == 0
    wait = rl.check("a")
    assert wait == pytest.approx(1.0)
    assert rl.check("b") == 0  # per key
    now[0] = 1.0
    assert rl.check("a") == 0
    now[0] = 100.0
    assert rl.check("a") == 0 and rl.check("a") == 0 and rl.check("a") > 0


def test_paginate_links() -> None:
    items, meta, links = paginate(list(range(45)), 2, 20, "/x", {"q": "a", "none": None})
    assert items == list(range(20, 40))
    assert meta == {"total_items": 45, "current_page": 2, "per_page": 20, "total_pages": 3}
    assert links["next"] == "/x?q=a&page=3&limit=20" and links["prev"] == "/x?q=a&page=1&limit=20"
    _, meta, links = paginate([], 1, 20, "/x", {})
    assert meta["total_pages"] == 1 and links["next"] is None and links["prev"] is None


def test_task_status_transitions() -> None:
    assert next_status("queued", "downloading") == "downloading"
    assert next_status("error", "downloading") == "downloading"
    assert next_status("completed", "completed") == "completed"
    for terminal in ("completed", "cancelled"):
        with pytest.raises(TaskStateConflict):
            next_status(terminal, "downloading")


def test_edge_parsing() -> None:
    assert EdgeConfig.parse("self", 0).base_url == "self"
    e = EdgeConfig.parse("nginx=http://127.0.0.1:81/cdn", 2)
    assert (e.id, e.base_url, e.mode, e.priority) == ("edge-2", "http://127.0.0.1:81/cdn/",
                                                      SigningMode.NGINX, 2)
    assert EdgeConfig.parse("http://h/cdn/", 1).mode is SigningMode.HMAC
    with pytest.raises(ValueError):
        EdgeConfig.parse("ftp://x", 0)
