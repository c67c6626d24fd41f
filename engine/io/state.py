"""The engine's persistent state (SQLite, ``engine.io.sqlitedb``): queue, journal, installed games.

The journal records blocks whose chunks are written and fsynced into staging files, and files
whose SHA-256 is verified, so a restart after kill -9 or power loss re-downloads at most the
blocks that were in flight.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import EngineError, ErrorCode
from engine.core.lifecycle import FINISHED, KEEPS_STAGING, TaskKind, TaskState, check_transition
from engine.io.sqlitedb import Database, transaction


def new_id() -> str:
    """A random id in ``uuid.uuid4().hex``'s form (version 4, RFC 4122 variant), without
    importing ``uuid`` (and ``platform`` with it) on every start."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    product_id: str
    version_id: str | None
    kind: TaskKind
    target_path: str
    priority: int
    position: int
    status: TaskState
    user_paused: bool
    created_at: float
    updated_at: float
    total_bytes: int
    download_bytes: int
    downloaded_bytes: int
    limit_bps: int | None
    backend_task_id: str | None
    error_code: str | None
    error_message: str | None
    from_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "taskId": self.id, "productId": self.product_id, "versionId": self.version_id,
            "kind": self.kind.value, "targetPath": self.target_path, "priority": self.priority,
            "position": self.position, "status": self.status.value, "userPaused": self.user_paused,
            "totalSizeBytes": self.total_bytes, "downloadSizeBytes": self.download_bytes,
            "downloadedBytes": self.downloaded_bytes, "limitBps": self.limit_bps,
            "errorCode": self.error_code, "errorMessage": self.error_message,
            "fromVersion": self.from_version, "backendTaskId": self.backend_task_id,
        }


@dataclass(frozen=True, slots=True)
class InstalledGame:
    product_id: str
    version_id: str
    path: str
    size: int
    installed_at: float
    dirty: bool
    previous_version: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"productId": self.product_id, "versionId": self.version_id, "path": self.path,
                "sizeBytes": self.size, "installedAt": self.installed_at, "dirty": self.dirty,
                "previousVersion": self.previous_version}


class State:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.manifest_dir = data_dir / "manifests"
        conn = sqlite3.connect(data_dir / "state.sqlite", timeout=30, isolation_level=None)
        self.db = Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a crash of the process loses nothing; a power loss may lose the last
        # commits, i.e. the journal forgets a few blocks that are then fetched again.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def close(self) -> None:
        self.db.conn.close()

    _TABLES = ("meta", "tasks", "block_done", "file_done", "installed")

    def _current(self) -> bool:
        """The database has this schema version and every table: nothing to create."""
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table: a new database
            return False
        names = {r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
        return row is not None and row[0] == str(SCHEMA_VERSION) and names.issuperset(self._TABLES)

    def _migrate(self) -> None:
        if self._current():
            return
        db = self.db
        db.create("meta", {"key": str, "value": str}, pk="key")
        db.create(
            "tasks", {
                "id": str, "product_id": str, "version_id": str, "kind": str, "target_path": str,
                "priority": int, "position": int, "status": str, "user_paused": int,
                "created_at": float, "updated_at": float, "total_bytes": int,
                "download_bytes": int, "downloaded_bytes": int, "limit_bps": int,
                "backend_task_id": str, "error_code": str, "error_message": str,
                "from_version": str,
            },
            pk="id",
        )
        db.create("block_done", {"task_id": str, "block": int}, pk=("task_id", "block"))
        db.create("file_done", {"task_id": str, "file": int}, pk=("task_id", "file"))
        db.create(
            "installed", {"product_id": str, "version_id": str, "path": str, "size": int,
             "installed_at": float, "dirty": int, "previous_version": str},
            pk="product_id",
        )
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.insert("meta", {"key": "schema_version", "value": str(SCHEMA_VERSION)})
        elif int(row[0]) > SCHEMA_VERSION:
            raise EngineError(ErrorCode.CONFIG_INVALID, f"state database is from a newer engine ({row[0]})")

    # -- key/value ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.upsert("meta", {"key": key, "value": value}, pk="key")

    # -- tasks --------------------------------------------------------------------------------
    def add_task(self, product_id: str, version_id: str | None, target_path: str, *,
                 priority: int = 0, kind: TaskKind = TaskKind.INSTALL,
                 from_version: str | None = None,
                 limit_bps: int | None = None) -> TaskRecord:
        now = time.time()
        row = self.db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM tasks").fetchone()
        task = {
            "id": new_id(), "product_id": product_id, "version_id": version_id,
            "kind": kind.value, "target_path": target_path, "priority": priority,
            "position": int(row[0]), "status": TaskState.QUEUED.value, "user_paused": 0,
            "created_at": now, "updated_at": now, "total_bytes": 0, "download_bytes": 0,
            "downloaded_bytes": 0, "limit_bps": limit_bps, "backend_task_id": None,
            "error_code": None, "error_message": None, "from_version": from_version,
        }
        self.db.insert("tasks", task)
        return self.task(str(task["id"]))

    @staticmethod
    def _task(row: sqlite3.Row) -> TaskRecord:
        return TaskRecord(
            id=row["id"], product_id=row["product_id"], version_id=row["version_id"],
            kind=TaskKind(row["kind"]), target_path=row["target_path"], priority=row["priority"],
            position=row["position"], status=TaskState(row["status"]),
            user_paused=bool(row["user_paused"]), created_at=row["created_at"],
            updated_at=row["updated_at"], total_bytes=row["total_bytes"] or 0,
            download_bytes=row["download_bytes"] or 0, downloaded_bytes=row["downloaded_bytes"] or 0,
            limit_bps=row["limit_bps"], backend_task_id=row["backend_task_id"],
            error_code=row["error_code"], error_message=row["error_message"],
            from_version=row["from_version"],
        )

    def task(self, task_id: str) -> TaskRecord:
        rows = self.db.rows("SELECT * FROM tasks WHERE id = ?", [task_id])
        if not rows:
            # a short unique prefix is accepted, as git does for commits
            rows = self.db.rows("SELECT * FROM tasks WHERE id LIKE ?", [task_id + "%"])
            if len(rows) != 1:
                raise EngineError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id!r}")
        return self._task(rows[0])

    def tasks(self, *, include_finished: bool = True) -> list[TaskRecord]:
        rows = self.db.rows("SELECT * FROM tasks ORDER BY priority DESC, position, created_at")
        out = [self._task(r) for r in rows]
        return out if include_finished else [t for t in out if t.status not in FINISHED]

    def update_task(self, task_id: str, **fields: Any) -> TaskRecord:
        """Change a task's data; its status changes only through ``set_status``."""
        if "status" in fields:
            raise TypeError("status changes go through set_status (the lifecycle table)")
        if "user_paused" in fields:
            fields["user_paused"] = int(bool(fields["user_paused"]))
        fields["updated_at"] = time.time()
        if not self.db.update("tasks", {"id": task_id}, fields):
            raise EngineError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id!r}")
        return self.task(task_id)

    def set_status(self, task_id: str, status: TaskState, **fields: Any) -> TaskRecord:
        """Move a task to ``status`` if the lifecycle table allows it (raises otherwise)."""
        current = self.task(task_id)
        check_transition(current.status, status, current.id)
        if "user_paused" in fields:
            fields["user_paused"] = int(bool(fields["user_paused"]))
        fields["status"] = status.value
        fields["updated_at"] = time.time()
        self.db.update("tasks", {"id": current.id}, fields)
        return self.task(current.id)

    def set_positions(self, ordered_ids: Iterable[str]) -> None:
        with transaction(self.db.conn):
            for pos, tid in enumerate(ordered_ids):
                self.db.execute("UPDATE tasks SET position = ? WHERE id = ?", [pos, tid])

    def active_task_for(self, product_id: str) -> TaskRecord | None:
        for t in self.tasks(include_finished=False):
            if t.product_id == product_id:
                return t
        return None

    # -- journal ------------------------------------------------------------------------------
    def done_blocks(self, task_id: str) -> set[int]:
        rows = self.db.execute("SELECT block FROM block_done WHERE task_id = ?", [task_id])
        return {int(r[0]) for r in rows}

    def record_progress(self, task_id: str, blocks: Iterable[int], files: Iterable[int]) -> None:
        """Journal written blocks and verified files in one transaction."""
        conn = self.db.conn
        with transaction(conn):
            conn.executemany("INSERT OR IGNORE INTO block_done (task_id, block) VALUES (?, ?)",
                             [(task_id, b) for b in blocks])
            conn.executemany("INSERT OR IGNORE INTO file_done (task_id, file) VALUES (?, ?)",
                             [(task_id, f) for f in files])

    def done_files(self, task_id: str) -> set[int]:
        rows = self.db.execute("SELECT file FROM file_done WHERE task_id = ?", [task_id])
        return {int(r[0]) for r in rows}

    def forget_blocks(self, task_id: str, blocks: Iterable[int], files: Iterable[int]) -> None:
        """Un-journal blocks and files (a staged file failed its hash: fetch them again)."""
        conn = self.db.conn
        with transaction(conn):
            conn.executemany("DELETE FROM block_done WHERE task_id = ? AND block = ?",
                             [(task_id, b) for b in blocks])
            conn.executemany("DELETE FROM file_done WHERE task_id = ? AND file = ?",
                             [(task_id, f) for f in files])

    def resumable_task_ids(self) -> set[str]:
        """Tasks whose staging must be kept: queued, running, paused, or failed (resumable)."""
        keep = sorted(s.value for s in KEEPS_STAGING)
        rows = self.db.execute(f"SELECT id FROM tasks WHERE status IN ({', '.join('?' * len(keep))})",
                               keep)
        return {str(r[0]) for r in rows}

    def latest_task_for(self, product_id: str) -> TaskRecord | None:
        rows = self.db.rows("SELECT * FROM tasks WHERE product_id = ? ORDER BY created_at DESC "
                            "LIMIT 1", [product_id])
        return self._task(rows[0]) if rows else None

    def clear_journal(self, task_id: str) -> None:
        self.db.execute("DELETE FROM block_done WHERE task_id = ?", [task_id])
        self.db.execute("DELETE FROM file_done WHERE task_id = ?", [task_id])

    # -- installed games ----------------------------------------------------------------------
    def installed(self) -> list[InstalledGame]:
        return [self._installed(r) for r in self.db.rows("SELECT * FROM installed ORDER BY product_id")]

    def installed_game(self, product_id: str) -> InstalledGame | None:
        rows = self.db.rows("SELECT * FROM installed WHERE product_id = ?", [product_id])
        return self._installed(rows[0]) if rows else None

    @staticmethod
    def _installed(r: sqlite3.Row) -> InstalledGame:
        return InstalledGame(r["product_id"], r["version_id"], r["path"], r["size"],
                             r["installed_at"], bool(r["dirty"]), r["previous_version"])

    def set_installed(self, game: InstalledGame) -> None:
        self.db.upsert(
            "installed", {"product_id": game.product_id, "version_id": game.version_id, "path": game.path,
             "size": game.size, "installed_at": game.installed_at, "dirty": int(game.dirty),
             "previous_version": game.previous_version},
            pk="product_id",
        )

    def remove_installed(self, product_id: str) -> None:
        self.db.execute("DELETE FROM installed WHERE product_id = ?", [product_id])

    # -- cached signed manifests --------------------------------------------------------------
    def manifest_files(self, product_id: str, version_id: str, *,
                       binary: bool = False) -> tuple[Path, Path]:
        """Where the engine keeps a version's signed manifest and its signature: the JSON form,
        or the binary one (``patcher.manifestbin``) under names of its own — an engine older
        than that form reads only ``<v>.manifest`` and could not decode a binary copy there."""
        base = self.manifest_dir / product_id
        if binary:
            return base / f"{version_id}.bmanifest", base / f"{version_id}.bsig"
        return base / f"{version_id}.manifest", base / f"{version_id}.sig"

    def cached_manifest_files(self, product_id: str, version_id: str) -> tuple[Path, Path] | None:
        """The engine's copy of a version's manifest, both files there: the binary form (the
        quicker to decode) when kept, else the JSON one; None when neither is."""
        for binary in (True, False):
            blob, sig = self.manifest_files(product_id, version_id, binary=binary)
            if blob.exists() and sig.exists():
                return blob, sig
        return None
