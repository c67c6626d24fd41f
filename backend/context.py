"""The application's services, built once per process and shared by the routers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from backend.auth import AuthUser, decode_access_token_exp
from backend.catalog import Catalog
from backend.config import EdgeList, Secrets, Settings
from backend.db import Database
from backend.errors import Unauthenticated
from backend.events import EventBus, LocalEventBus, RedisEventBus
from backend.objectstore import LocalSaveStorage, S3SaveStorage, SaveStorage
from backend.ratelimit import Limiter, RateLimiter, RedisRateLimiter


@dataclass
class Context:
    settings: Settings
    secrets: Secrets
    db: Database
    catalog: Catalog
    edges: EdgeList
    cdn_limiter: Limiter
    events: EventBus = field(default_factory=LocalEventBus)  # WebSocket fan-out (backend.ws)
    saves: SaveStorage | None = None  # None: local disk under DATA/saves (set in __post_init__)
    redis: Any = None  # a redis.Redis client when the state is shared (settings.redis_url)

    def __post_init__(self) -> None:
        if self.saves is None:
            self.saves = LocalSaveStorage(self.settings.saves_dir)

    @staticmethod
    def build(settings: Settings, *, with_db: bool = True) -> Context:
        """The embedded default unless the settings name Redis (shared rate limits and events)
        and S3-compatible storage (saves through presigned URLs)."""
        secrets = Secrets.load(settings)
        db = Database(settings.db_url)
        if with_db:
            db.init_schema()
        limiter: Limiter = RateLimiter(settings.cdn_rate_capacity, settings.cdn_rate_per_second)
        events: EventBus = LocalEventBus()
        client = None
        if settings.redis_url:
            import redis

            # short timeouts: a dead Redis must turn into a quick 503, not a hung worker
            client = redis.Redis.from_url(settings.redis_url, socket_timeout=2,
                                          socket_connect_timeout=1, health_check_interval=30)
            limiter = RedisRateLimiter(client, settings.cdn_rate_capacity,
                                       settings.cdn_rate_per_second, url=settings.redis_url)
            events = RedisEventBus(client)
        saves: SaveStorage = LocalSaveStorage(settings.saves_dir)
        if settings.s3_endpoint:
            saves = S3SaveStorage(settings.s3_endpoint, settings.s3_bucket,
                                  settings.s3_access_key or "", settings.s3_secret_key or "",
                                  region=settings.s3_region,
                                  public_endpoint=settings.s3_public_endpoint)
        return Context(
            settings=settings,
            secrets=secrets,
            db=db,
            catalog=Catalog(settings.store_dir),
            edges=EdgeList(settings),
            cdn_limiter=limiter,
            events=events,
            saves=saves,
            redis=client,
        )

    @property
    def save_storage(self) -> SaveStorage:
        assert self.saves is not None
        return self.saves

    def public_url(self, request: Request | None = None) -> str:
        if self.settings.public_url:
            return self.settings.public_url
        if request is not None:
            return str(request.base_url).rstrip("/")
        return f"http://{self.settings.host}:{self.settings.port}"


def ctx_of(request: HTTPConnection) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def get_ctx(request: Request) -> Context:
    """Dependency (async: no worker-thread hop for a field lookup)."""
    return ctx_of(request)


class TokenCache:
    """Decoded access tokens (signature checked once), dropped at their expiry."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._data: dict[str, tuple[AuthUser, float]] = {}

    def decode(self, key: bytes, token: str) -> AuthUser:
        now = time.time()
        hit = self._data.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        user, exp = decode_access_token_exp(key, token)
        if len(self._data) >= self.size:
            self._data.clear()
        self._data[token] = (user, exp)
        return user


_tokens = TokenCache()
_bearer = HTTPBearer(auto_error=False, description="JWT access token from POST /api/v1/auth/token")


async def current_user(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthUser:
    if creds is None:
        raise Unauthenticated("missing Authorization: Bearer token")
    if creds.scheme.lower() != "bearer":
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    return _tokens.decode(ctx_of(request).secrets.jwt_key, creds.credentials)


async def optional_user(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthUser | None:
    if creds is None:
        return None
    return _tokens.decode(ctx_of(request).secrets.jwt_key, creds.credentials)


CtxDep = Annotated[Context, Depends(get_ctx)]
UserDep = Annotated[AuthUser, Depends(current_user)]
