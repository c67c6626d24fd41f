"""Accounts and tokens: bcrypt password hashes, short-lived JWT access tokens, rotating refresh
tokens stored hashed (a reused refresh token revokes its whole family)."""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import bcrypt
import jwt
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db import RefreshToken, User, utcnow
from backend.errors import ApiError, Conflict, Unauthenticated, ValidationFailed

JWT_ALG = "HS256"
MAX_PASSWORD_BYTES = 72  # bcrypt's limit
_DUMMY_HASH = bcrypt.hashpw(b"dummy-password", bcrypt.gensalt(rounds=4))


class UserExists(ApiError):
    status = 409
    code = "USER_EXISTS"
    title = "User exists"


@dataclass(frozen=True, slots=True)
class AuthUser:
    id: str
    username: str


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def bcrypt_rounds() -> int:
    """12 by default; tests lower it with LAUNCHER_BCRYPT_ROUNDS (minimum 4)."""
    return max(4, int(os.environ.get("LAUNCHER_BCRYPT_ROUNDS", "12")))


def hash_password(password: str) -> str:
    raw = password.encode()
    if not raw or len(raw) > MAX_PASSWORD_BYTES:
        raise ValidationFailed(f"password must be 1..{MAX_PASSWORD_BYTES} bytes",
                               pointer="/password")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=bcrypt_rounds())).decode()


def check_password(password: str, hashed: str | None) -> bool:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES or hashed is None:
        bcrypt.checkpw(b"x", _DUMMY_HASH)  # same work whether or not the user exists
        return False
    return bcrypt.checkpw(raw, hashed.encode())


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- access tokens (pure) ------------------------------------------------------------------------


def issue_access_token(key: bytes, user: AuthUser, now: datetime, ttl: int) -> str:
    claims = {
        "sub": user.id,
        "name": user.username,
        "typ": "access",
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=JWT_ALG)


def decode_access_token(key: bytes, token: str) -> AuthUser:
    return decode_access_token_exp(key, token)[0]


def decode_access_token_exp(key: bytes, token: str) -> tuple[AuthUser, float]:
    """The token's user and expiry (unix seconds), or Unauthenticated."""
    try:
        claims = jwt.decode(token, key, algorithms=[JWT_ALG], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("access token expired", code="TOKEN_EXPIRED") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("invalid access token", code="TOKEN_INVALID") from exc
    if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str):
        raise Unauthenticated("invalid access token", code="TOKEN_INVALID")
    return AuthUser(claims["sub"], str(claims.get("name", ""))), float(claims["exp"])


def parse_bearer(header: str | None) -> str:
    if not header:
        raise Unauthenticated("missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    return token.strip()


# -- accounts and refresh tokens (database) ------------------------------------------------------


def create_user(s: Session, username: str, password: str) -> User:
    if not username or len(username) > 64 or not username.isprintable():
        raise ValidationFailed("username must be 1..64 printable characters", pointer="/username")
    user = User(username=username, password_hash=hash_password(password))
    s.add(user)
    try:
        s.flush()
    except IntegrityError as exc:
        raise UserExists(f"user {username!r} already exists") from exc
    return user


def set_password(s: Session, username: str, password: str) -> User:
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise Conflict(f"no user {username!r}", code="USER_NOT_FOUND")
    user.password_hash = hash_password(password)
    return user


def authenticate(s: Session, username: str, password: str) -> AuthUser:
    user = s.scalar(select(User).where(User.username == username))
    if not check_password(password, user.password_hash if user else None) or user is None:
        raise Unauthenticated("wrong username or password", code="INVALID_CREDENTIALS")
    return AuthUser(user.id, user.username)


def _new_refresh(s: Session, user_id: str, family: str, now: datetime, ttl: int) -> str:
    token = secrets.token_urlsafe(32)
    s.add(RefreshToken(user_id=user_id, family_id=family, token_hash=hash_token(token),
                       created_at=now, expires_at=now + timedelta(seconds=ttl)))
    return token


def issue_tokens(
    s: Session, key: bytes, user: AuthUser, *, access_ttl: int, refresh_ttl: int,
    family: str | None = None,
) -> TokenPair:
    now = utcnow()
    refresh = _new_refresh(s, user.id, family or str(uuid.uuid4()), now, refresh_ttl)
    return TokenPair(issue_access_token(key, user, now, access_ttl), refresh, access_ttl)


def rotate_refresh(
    s: Session, key: bytes, token: str, *, access_ttl: int, refresh_ttl: int
) -> TokenPair:
    now = utcnow()
    row = s.scalar(select(RefreshToken).where(RefreshToken.token_hash == hash_token(token)))
    if row is None:
        raise Unauthenticated("unknown refresh token", code="REFRESH_TOKEN_INVALID")
    if row.revoked_at is not None or row.used_at is not None:
        # a rotated-out token came back: assume it leaked and end the whole family
        revoke_family(s, row.family_id, now)
        raise Unauthenticated("refresh token already used or revoked",
                              code="REFRESH_TOKEN_REVOKED")
    if row.expires_at <= now:
        raise Unauthenticated("refresh token expired", code="REFRESH_TOKEN_EXPIRED")
    user = s.get(User, row.user_id)
    if user is None:
        raise Unauthenticated("account no longer exists", code="REFRESH_TOKEN_INVALID")
    row.used_at = now
    return issue_tokens(s, key, AuthUser(user.id, user.username), access_ttl=access_ttl,
                        refresh_ttl=refresh_ttl, family=row.family_id)


def revoke_family(s: Session, family_id: str, now: datetime) -> None:
    s.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def revoke(s: Session, token: str | None, user_id: str | None) -> None:
    """Revoke one refresh token's family, or (with no token) every refresh token of a user."""
    now = utcnow()
    if token is not None:
        row = s.scalar(select(RefreshToken).where(RefreshToken.token_hash == hash_token(token)))
        if row is None or (user_id is not None and row.user_id != user_id):
            raise Unauthenticated("unknown refresh token", code="REFRESH_TOKEN_INVALID")
        revoke_family(s, row.family_id, now)
        return
    if user_id is None:
        raise Unauthenticated("give a refreshToken or a bearer access token")
    s.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
