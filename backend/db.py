"""Database schema (SQLAlchemy 2) and connection handling.

SQLite by default; the same models run on PostgreSQL given a DSN. The schema is versioned: a
``schema_version`` table holds one row; a fresh database is created with ``create_all`` and
stamped, an existing one must carry the version this code expects (no silent drift) or an older
one that ``MIGRATIONS`` upgrades step by step, each step in one transaction (a newer or unknown
version is refused).

Versions: 1 (initial), 2 (user categories: ``user_categories``, ``library_item_categories``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

SCHEMA_VERSION = 2


class SchemaMismatch(RuntimeError):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Product(Base):
    __tablename__ = "products"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LibraryItem(Base):
    __tablename__ = "library_items"
    __table_args__ = (UniqueConstraint("user_id", "product_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acquisition_type: Mapped[str] = mapped_column(String(32), default="purchase")
    is_hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    user_rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_played_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    total_playtime_seconds: Mapped[int] = mapped_column(BigInteger, default=0)


class UserCategory(Base):
    """A user's own category (collection) of library items; names are unique per user, compared
    by ``name_key`` (NFC, case-folded)."""

    __tablename__ = "user_categories"
    __table_args__ = (UniqueConstraint("user_id", "name_key"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    name_key: Mapped[str] = mapped_column(String(255))
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LibraryItemCategory(Base):
    """Membership of a library item in one of its owner's categories (the seed's
    ``user_categories`` array as a join table: portable, and deleting either side cascades)."""

    __tablename__ = "library_item_categories"
    item_id: Mapped[str] = mapped_column(ForeignKey("library_items.id", ondelete="CASCADE"),
                                         primary_key=True)
    category_id: Mapped[str] = mapped_column(ForeignKey("user_categories.id", ondelete="CASCADE"),
                                             primary_key=True, index=True)


class DownloadTask(Base):
    __tablename__ = "download_tasks"
    __table_args__ = (Index("ix_download_tasks_user_status", "user_id", "status"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    product_id: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str] = mapped_column(String(128))
    from_version_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="install")  # install | update
    target_path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue_order: Mapped[int] = mapped_column(Integer, default=0)
    total_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    download_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    downloaded_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DownloadTaskHistory(Base):
    __tablename__ = "download_task_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("download_tasks.id", ondelete="CASCADE"),
                                         index=True)
    status: Mapped[str] = mapped_column(String(16))
    downloaded_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UpdateHistory(Base):
    __tablename__ = "update_history"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(String(128))
    from_version_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    to_version_id: Mapped[str] = mapped_column(String(128))
    task_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    update_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VerificationTask(Base):
    __tablename__ = "verification_tasks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    total_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PlaytimeSession(Base):
    __tablename__ = "playtime_sessions"
    __table_args__ = (
        Index("ix_playtime_user_product", "user_id", "product_id"),
        UniqueConstraint("user_id", "start_key"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    product_id: Mapped[str] = mapped_column(String(128))
    start_key: Mapped[str | None] = mapped_column(String(128), nullable=True)  # Idempotency-Key
    start_time: Mapped[datetime] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | completed
    end_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)  # client|timeout|..


class SavegameUpload(Base):
    __tablename__ = "savegame_uploads"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(String(128))
    slot: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    base_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|uploaded|confirmed
    uploaded_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    uploaded_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    savegame_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Savegame(Base):
    __tablename__ = "savegames"
    __table_args__ = (UniqueConstraint("user_id", "product_id", "slot", "version"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(String(128))
    slot: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1024))
    client_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    server_timestamp: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Database:
    """Engine + session factory; ``session()`` is a unit of work (commit on success)."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def stored_versions(self) -> list[int]:
        with self.session() as s:
            return list(s.scalars(select(SchemaVersion.version)).all())

    def init_schema(self) -> None:
        """Create tables on an empty database, or check the stored schema version and migrate an
        older one (``MIGRATIONS``)."""
        tables = set(inspect(self.engine).get_table_names())
        if "schema_version" in tables:
            found = self.stored_versions()
            while len(found) == 1 and found[0] in MIGRATIONS and found[0] < SCHEMA_VERSION:
                self._migrate_from(found[0])
                found = self.stored_versions()
            if found != [SCHEMA_VERSION]:
                raise SchemaMismatch(
                    f"database schema version {found} but this backend needs {SCHEMA_VERSION}"
                )
            return
        Base.metadata.create_all(self.engine)
        with self.session() as s:
            if s.get(SchemaVersion, SCHEMA_VERSION) is None:
                s.add(SchemaVersion(version=SCHEMA_VERSION))

    def _migrate_from(self, version: int) -> None:
        """One step, ``version`` -> ``version + 1``, in one transaction. The version row is
        claimed first (a row lock on PostgreSQL, the write lock on SQLite), so of two processes
        migrating at once one does the work and the other finds it done."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(SchemaVersion)
                .where(SchemaVersion.version == version)
                .values(version=version + 1, applied_at=utcnow())
            ).rowcount
            if claimed == 1:
                MIGRATIONS[version](conn)

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()


def _migrate_1_to_2(conn: Connection) -> None:
    """User categories: two new tables, nothing else changes."""
    tables = Base.metadata.tables
    Base.metadata.create_all(conn, tables=[tables[UserCategory.__tablename__],
                                           tables[LibraryItemCategory.__tablename__]])


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1_to_2}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
