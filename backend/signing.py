"""Signed CDN URLs: pure functions, no I/O.

A CDN URL for a store file is ``baseUrl + relpath + "?" + query``. The signature covers the path
prefix ``<product>/`` (so one token opens every pack, manifest and patch of one product and
nothing else), the expiry (unix seconds) and the user id. Two modes:

``hmac`` (the backend's own CDN route, ``launcher-backend cdn`` edges)
    ``expires=E&prefix=P&user=U&sig=S`` with
    ``S = base64url(HMAC-SHA256(key, "v1\\n" + E + "\\n" + P + "\\n" + U))`` without padding.

``nginx`` (nginx ``secure_link``; also accepted by the backend's route)
    ``expires=E&user=U&md5=M`` with ``M = base64url(MD5(E + " " + P + " " + U + " " + S))``
    without padding, where ``S`` is ``nginx_secret(key)`` (a hex string derived from the CDN key,
    so the raw HMAC key never appears in an nginx config) and ``P`` is taken by nginx from the
    first segment of the requested path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qs, urlencode

PRODUCT_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
USER_RE = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")


class SigningMode(StrEnum):
    HMAC = "hmac"
    NGINX = "nginx"


class TokenRejected(Exception):
    """A CDN token does not open the requested path; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignedQuery:
    query: str
    expires: int


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def nginx_secret(key: bytes) -> str:
    """The secret an nginx edge is configured with (derived, one-way, from the CDN key)."""
    return hmac.new(key, b"nginx-secure-link-v1", hashlib.sha256).hexdigest()


def product_prefix(product_id: str) -> str:
    if not PRODUCT_RE.match(product_id):
        raise ValueError(f"invalid product id {product_id!r}")
    return f"{product_id}/"


def _hmac_sig(key: bytes, expires: int, prefix: str, user: str) -> str:
    msg = f"v1\n{expires}\n{prefix}\n{user}".encode()
    return b64url(hmac.new(key, msg, hashlib.sha256).digest())


def _nginx_sig(key: bytes, expires: int, prefix: str, user: str) -> str:
    msg = f"{expires} {prefix} {user} {nginx_secret(key)}".encode()
    return b64url(hashlib.md5(msg, usedforsecurity=False).digest())


def sign(key: bytes, mode: SigningMode, product_id: str, user: str, expires: int) -> SignedQuery:
    prefix = product_prefix(product_id)
    if not USER_RE.match(user):
        raise ValueError(f"invalid user id {user!r}")
    if mode is SigningMode.HMAC:
        params = {"expires": str(expires), "prefix": prefix, "user": user,
                  "sig": _hmac_sig(key, expires, prefix, user)}
    else:
        params = {"expires": str(expires), "user": user,
                  "md5": _nginx_sig(key, expires, prefix, user)}
    return SignedQuery(urlencode(params, safe="/"), expires)


def safe_relpath(path: str) -> str:
    """A store-relative path that cannot escape the CDN root, or TokenRejected."""
    if not path or "\\" in path or "\x00" in path or path.startswith("/"):
        raise TokenRejected("BAD_PATH", "invalid path")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or len(parts) < 2:
        raise TokenRejected("BAD_PATH", "invalid path")
    return path


def verify(key: bytes, relpath: str, params: dict[str, str], now: float) -> str:
    """Check a token against the requested path; return the user id it was issued to."""
    relpath = safe_relpath(relpath)
    product = relpath.split("/", 1)[0]
    prefix = f"{product}/"
    user = params.get("user", "")
    raw_expires = params.get("expires", "")
    if not raw_expires.isdigit() or len(raw_expires) > 12 or not USER_RE.match(user):
        raise TokenRejected("TOKEN_MISSING", "missing or malformed CDN token")
    expires = int(raw_expires)
    if "sig" in params:
        if params.get("prefix") != prefix:
            raise TokenRejected("TOKEN_WRONG_PRODUCT", "token does not cover this product")
        expected = _hmac_sig(key, expires, prefix, user)
        given = params["sig"]
    elif "md5" in params:
        expected = _nginx_sig(key, expires, prefix, user)
        given = params["md5"]
    else:
        raise TokenRejected("TOKEN_MISSING", "missing CDN token")
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise TokenRejected("TOKEN_INVALID", "CDN token signature does not match")
    if expires < now:
        raise TokenRejected("TOKEN_EXPIRED", "CDN token expired")
    return user


def parse_query(query: str) -> dict[str, str]:
    """Single-valued query parameters (a repeated parameter is refused by taking none)."""
    out: dict[str, str] = {}
    for k, v in parse_qs(query, keep_blank_values=True).items():
        if len(v) == 1:
            out[k] = v[0]
    return out


# -- opaque HMAC tokens for presigned-style save-game URLs ---------------------------------------


def sign_blob_token(key: bytes, purpose: str, subject: str, user: str, expires: int) -> str:
    body = f"{purpose}.{subject}.{user}.{expires}"
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{b64url(body.encode())}.{b64url(mac)}"


def verify_blob_token(key: bytes, token: str, purpose: str, now: float) -> tuple[str, str]:
    """Return (subject, user) of a valid token for ``purpose``; raise TokenRejected otherwise."""
    try:
        b64body, b64mac = token.split(".", 1)
        body = base64.urlsafe_b64decode(b64body + "=" * (-len(b64body) % 4)).decode()
        got_purpose, subject, user, expires = body.split(".")
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenRejected("TOKEN_INVALID", "malformed token") from exc
    mac = b64url(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode(), b64mac.encode()) or got_purpose != purpose:
        raise TokenRejected("TOKEN_INVALID", "token signature does not match")
    if not expires.isdigit() or int(expires) < now:
        raise TokenRejected("TOKEN_EXPIRED", "token expired")
    return subject, user
