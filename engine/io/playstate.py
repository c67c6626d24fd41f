"""The sync agent's persistent state, in the engine's SQLite database beside the queue:
playtime sessions, the outbox of calls owed to the backend, and the last synced state of every
save slot. Written before anything is sent, so a kill -9 or a power loss loses no playtime and
no unlock: the next start replays what was not acknowledged, in order."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Protocol

from engine.core.playtime import CallKind, LocalSession, OutboxCall
from engine.io.sqlitedb import create_table_sql, transaction

if TYPE_CHECKING:
    from engine.core.savesync import Base


class Connected(Protocol):
    """What PlayState needs of a database: its connection (``engine.io.sqlitedb.Database``,
    or a sqlite-utils ``Database``, as bench/sync.py passes)."""

    @property
    def conn(self) -> sqlite3.Connection: ...


class PlayState:
    def __init__(self, db: Connected) -> None:
        self.db = db.conn  # plain sqlite3: no sqlite-utils on the engine's start (issue 13)
        for table, columns, pk in self._TABLES:
            self.db.execute(create_table_sql(table, columns, pk))

    _TABLES: tuple[tuple[str, dict[str, type], str | tuple[str, ...]], ...] = (
        ("play_sessions", {"id": str, "product_id": str, "started_at": float, "last_beat_at": float,
             "ended_at": float, "exit_code": int, "server_id": str}, "id"),
        ("outbox", {"seq": int, "kind": str, "key": str, "payload": str, "created_at": float,
             "attempts": int}, "seq"),
        ("save_base", {"product_id": str, "slot": str, "sha256": str, "version_id": str,
             "synced_at": float}, ("product_id", "slot")),
        ("achievement_seen", {"product_id": str, "achievement_id": str, "unlocked_at": float},
         ("product_id", "achievement_id")),
    )

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, params).fetchall()

    # -- sessions -----------------------------------------------------------------------------
    @staticmethod
    def _session(row: sqlite3.Row) -> LocalSession:
        return LocalSession(row["id"], row["product_id"], row["started_at"], row["last_beat_at"],
                            row["ended_at"], row["exit_code"])

    def start_session(self, session_id: str, product_id: str, now: float) -> LocalSession:
        with transaction(self.db):
            self.db.execute("INSERT INTO play_sessions (id, product_id, started_at, last_beat_at, "
                            "ended_at, exit_code) VALUES (?, ?, ?, ?, NULL, NULL)",
                            [session_id, product_id, now, now])
            self._queue(CallKind.SESSION_START, session_id,
                        {"productId": product_id, "startedAt": now})
        return self.session(session_id)

    def beat(self, session_id: str, now: float) -> None:
        with transaction(self.db):
            self.db.execute("UPDATE play_sessions SET last_beat_at = ? WHERE id = ? AND "
                            "ended_at IS NULL", [now, session_id])
            self._queue(CallKind.SESSION_HEARTBEAT, session_id, {"at": now})

    def end_session(self, session_id: str, ended_at: float, exit_code: int | None) -> LocalSession:
        with transaction(self.db):
            self.db.execute("UPDATE play_sessions SET ended_at = ?, last_beat_at = MAX("
                            "last_beat_at, ?), exit_code = ? WHERE id = ? AND ended_at IS NULL",
                            [ended_at, ended_at, exit_code, session_id])
            s = self.session(session_id)
            self._queue(CallKind.SESSION_END, session_id,
                        {"endedAt": s.ended_at, "seconds": s.seconds(ended_at),
                         "exitCode": exit_code})
        return s

    def set_server_id(self, session_id: str, server_id: str) -> None:
        self.db.execute("UPDATE play_sessions SET server_id = ? WHERE id = ?", [server_id, session_id])

    def server_id(self, session_id: str) -> str | None:
        row = self.db.execute("SELECT server_id FROM play_sessions WHERE id = ?",
                              [session_id]).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def session(self, session_id: str) -> LocalSession:
        rows = self._rows("SELECT * FROM play_sessions WHERE id = ?", [session_id])
        if not rows:
            raise KeyError(f"no play session {session_id!r}")
        return self._session(rows[0])

    def sessions(self, product_id: str | None = None) -> list[LocalSession]:
        if product_id:
            rows = self._rows("SELECT * FROM play_sessions WHERE product_id = ? ORDER BY "
                              "started_at", [product_id])
        else:
            rows = self._rows("SELECT * FROM play_sessions ORDER BY started_at")
        return [self._session(r) for r in rows]

    def open_sessions(self) -> list[LocalSession]:
        return [self._session(r) for r in self._rows(
            "SELECT * FROM play_sessions WHERE ended_at IS NULL")]

    # -- outbox -------------------------------------------------------------------------------
    def _queue(self, kind: CallKind, key: str, payload: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO outbox (seq, kind, key, payload, created_at, attempts) "
                        "VALUES (NULL, ?, ?, ?, ?, 0)",
                        [kind.value, key, json.dumps(payload), time.time()])

    def queue(self, kind: CallKind, key: str, payload: dict[str, Any]) -> None:
        with transaction(self.db):
            self._queue(kind, key, payload)

    def pending(self, limit: int = 500) -> list[OutboxCall]:
        rows = self.db.execute("SELECT seq, kind, key, payload FROM outbox ORDER BY seq LIMIT ?",
                               [limit]).fetchall()
        return [OutboxCall(int(r[0]), CallKind(r[1]), str(r[2]), json.loads(r[3])) for r in rows]

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def forget(self, seqs: list[int]) -> None:
        if seqs:
            with transaction(self.db):
                self.db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(seqs))})",
                                seqs)

    def attempted(self, seq: int) -> None:
        self.db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", [seq])

    # -- saves --------------------------------------------------------------------------------
    def save_bases(self, product_id: str) -> dict[str, Base]:
        from engine.core.savesync import Base  # the saves' rules: not imported at every start

        return {r["slot"]: Base(r["sha256"], r["version_id"]) for r in
                self._rows("SELECT * FROM save_base WHERE product_id = ?", [product_id])}

    def set_save_base(self, product_id: str, slot: str, base: Base) -> None:
        self.db.execute("INSERT INTO save_base (product_id, slot, sha256, version_id, synced_at) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (product_id, slot) DO UPDATE SET "
                        "sha256 = excluded.sha256, version_id = excluded.version_id, "
                        "synced_at = excluded.synced_at",
                        [product_id, slot, base.sha256, base.version_id, time.time()])

    # -- achievements -------------------------------------------------------------------------
    def first_unlock(self, product_id: str, achievement_id: str, now: float) -> bool:
        """Record an unlock locally; False when it was already recorded (sent once only)."""
        cur = self.db.execute("INSERT OR IGNORE INTO achievement_seen (product_id, "
                              "achievement_id, unlocked_at) VALUES (?, ?, ?)",
                              [product_id, achievement_id, now])
        return cur.rowcount == 1
