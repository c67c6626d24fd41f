"""Backend settings, the data-dir layout, secrets and the CDN edge list.

Layout of a data dir::

    DATA/backend.sqlite        database (unless a DSN is given)
    DATA/backend.json          optional settings overriding the defaults below (same names)
    DATA/cdn-edges.json        optional edge list, re-read when it changes (see ``load_edges``)
    DATA/secrets/jwt.key       JWT signing key, mode 0600, created on first start
    DATA/secrets/cdn.key       CDN URL signing key (shared by every edge), mode 0600
    DATA/store/                the content store (``patcher.store.Store``; CDN root is store/cdn)
    DATA/store/covers/         cover art, ``<product_id>.png`` (``backend.covers``)
    DATA/saves/                save-game blobs (local storage; S3-compatible storage instead when
                               ``s3_endpoint`` is set)
    DATA/metrics/              per-worker metric snapshots summed by ``GET /metrics``
    DATA/builds/               demo build folders (``--demo``)
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.signing import SigningMode

SELF_EDGE = "self"


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """One CDN edge: ``base_url`` is "self" for the backend's own ``/cdn/`` route."""

    id: str
    base_url: str
    mode: SigningMode = SigningMode.HMAC
    priority: int = 0

    @staticmethod
    def parse(value: str, index: int) -> EdgeConfig:
        """``self``, ``URL``, ``hmac=URL`` or ``nginx=URL`` (CLI ``--cdn-edge``)."""
        mode = SigningMode.HMAC
        for m in SigningMode:
            if value.startswith(f"{m.value}="):
                mode, value = m, value[len(m.value) + 1 :]
        if value != SELF_EDGE and not value.startswith(("http://", "https://")):
            raise ValueError(f"CDN edge must be 'self' or an http(s) URL, got {value!r}")
        if value != SELF_EDGE and not value.endswith("/"):
            value += "/"
        return EdgeConfig(f"edge-{index}", value, mode, index)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "baseUrl": self.base_url, "mode": self.mode.value,
                "priority": self.priority}

    @staticmethod
    def from_dict(d: dict[str, Any], index: int) -> EdgeConfig:
        return EdgeConfig(
            id=str(d.get("id", f"edge-{index}")),
            base_url=str(d["baseUrl"]) if str(d["baseUrl"]).endswith("/") or d["baseUrl"] == SELF_EDGE
            else str(d["baseUrl"]) + "/",
            mode=SigningMode(d.get("mode", "hmac")),
            priority=int(d.get("priority", index)),
        )


@dataclass(slots=True)
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    database_url: str | None = None
    public_url: str | None = None  # set once the socket is bound
    edges: tuple[EdgeConfig, ...] = (EdgeConfig("edge-0", SELF_EDGE),)
    access_token_ttl: int = 15 * 60
    refresh_token_ttl: int = 30 * 24 * 3600
    cdn_token_ttl: int = 15 * 60
    cdn_rate_capacity: float = 30.0  # token bucket burst per user
    cdn_rate_per_second: float = 2.0  # sustained refill per user
    playtime_timeout: int = 5 * 60
    playtime_max_session: int = 24 * 3600  # a stated session end is capped at this length
    playtime_max_backdate: int = 30 * 86_400  # how old a replayed session start may be
    save_max_bytes: int = 64 * 1024 * 1024
    save_quota_bytes: int = 256 * 1024 * 1024
    save_keep_versions: int = 10
    save_url_ttl: int = 10 * 60
    max_active_tasks: int = 100
    max_categories: int = 100  # user categories per user
    wishlist_max_items: int = 100  # the seed's wishlist.max_items_per_user
    family_max_members: int = 5  # members one owner may share the library with
    # the scaled stack (docs/operations.md); all unset = the embedded default (one process,
    # in-memory rate limits and events, saves on local disk)
    workers: int = 1  # uvicorn worker processes sharing the one listening socket
    redis_url: str | None = None  # rate limits and live events shared by every worker
    s3_endpoint: str | None = None  # S3-compatible save storage the backend talks to
    s3_public_endpoint: str | None = None  # what clients PUT/GET (presigned); default endpoint
    s3_bucket: str = "launcher-saves"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    access_log: bool = False  # one JSON line per request on stderr (the stack turns it on)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def cdn_root(self) -> Path:
        return self.store_dir / "cdn"

    @property
    def saves_dir(self) -> Path:
        return self.data_dir / "saves"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def edges_file(self) -> Path:
        return self.data_dir / "cdn-edges.json"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'backend.sqlite'}"


_TUNABLE = {
    f.name for f in dataclasses.fields(Settings)
    if f.name not in ("data_dir", "edges", "extra", "public_url")
}


def load_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Defaults, then DATA/backend.json, then explicit overrides (CLI flags; None = unset)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {}
    cfg = data_dir / "backend.json"
    if cfg.exists():
        doc = json.loads(cfg.read_text())
        values.update({k: v for k, v in doc.items() if k in _TUNABLE})
        if "edges" in doc:
            values["edges"] = tuple(EdgeConfig.from_dict(e, i) for i, e in enumerate(doc["edges"]))
    for name in ("redis_url", "s3_endpoint", "s3_public_endpoint", "s3_bucket", "s3_access_key",
                 "s3_secret_key"):  # secrets can stay out of backend.json
        env = os.environ.get(f"LAUNCHER_{name.upper()}")
        if env:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(data_dir=data_dir, **values)


def read_or_create_secret(path: Path, size: int = 32) -> bytes:
    """A random key created once with mode 0600; concurrent first starts agree on one key."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(size))
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # atomic: fails if another process won the race
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


@dataclass(frozen=True, slots=True)
class Secrets:
    jwt_key: bytes
    cdn_key: bytes

    @staticmethod
    def load(settings: Settings) -> Secrets:
        return Secrets(
            jwt_key=read_or_create_secret(settings.secrets_dir / "jwt.key"),
            cdn_key=read_or_create_secret(settings.secrets_dir / "cdn.key"),
        )


class EdgeList:
    """The configured edges; DATA/cdn-edges.json (a JSON list of edge objects) wins when present
    and is re-read whenever its mtime changes, so edges can be added or removed at run time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._mtime: float | None = None
        self._cached: tuple[EdgeConfig, ...] = settings.edges

    def current(self) -> tuple[EdgeConfig, ...]:
        path = self.settings.edges_file
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return self.settings.edges
        if mtime != self._mtime:
            try:
                doc = json.loads(path.read_text())
                self._cached = tuple(EdgeConfig.from_dict(e, i) for i, e in enumerate(doc))
                self._mtime = mtime
            except (ValueError, KeyError, TypeError):
                return self._cached or self.settings.edges
        return self._cached

    def resolve_url(self, edge: EdgeConfig) -> str:
        if edge.base_url == SELF_EDGE:
            return f"{self.settings.public_url}/cdn/"
        return edge.base_url


def write_edges(path: Path, edges: list[EdgeConfig]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([e.to_dict() for e in edges], indent=2))
    os.replace(tmp, path)
