"""The sync agent's persistent state, in the engine's SQLite database beside the queue:
playtime sessions, the outbox of calls owed to the backend, and the last synced state of every
save slot. Written before anything is sent, so a kill -9 or a power loss loses no playtime and
no unlock: the next start replays what was not acknowledged, in order."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlite_utils

from engine.core.playtime import CallKind, LocalSession, OutboxCall
from engine.core.savesync import Base


class PlayState:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        db.table("play_sessions").create(
            {"id": str, "product_id": str, "started_at": float, "last_beat_at": float,
             "ended_at": float, "exit_code": int, "server_id": str},
            pk="id", if_not_exists=True)
        db.table("outbox").create(
            {"seq": int, "kind": str, "key": str, "payload": str, "created_at": float,
             "attempts": int},
            pk="seq", if_not_exists=True)
        db.table("save_base").create(
            {"product_id": str, "slot": str, "sha256": str, "version_id": str,
             "synced_at": float},
            pk=("product_id", "slot"), if_not_exists=True)
        db.table("achievement_seen").create(
            {"product_id": str, "achievement_id": str, "unlocked_at": float},
            pk=("product_id", "achievement_id"), if_not_exists=True)

    # -- sessions -----------------------------------------------------------------------------
    @staticmethod
    def _session(row: dict[str, Any]) -> LocalSession:
        return LocalSession(row["id"], row["product_id"], row["started_at"], row["last_beat_at"],
                            row["ended_at"], row["exit_code"])

    def start_session(self, session_id: str, product_id: str, now: float) -> LocalSession:
        with self.db.conn:
            self.db.table("play_sessions").insert(
                {"id": session_id, "product_id": product_id, "started_at": now,
                 "last_beat_at": now, "ended_at": None, "exit_code": None})
            self._queue(CallKind.SESSION_START, session_id,
                        {"productId": product_id, "startedAt": now})
        return self.session(session_id)

    def beat(self, session_id: str, now: float) -> None:
        with self.db.conn:
            self.db.execute("UPDATE play_sessions SET last_beat_at = ? WHERE id = ? AND "
                            "ended_at IS NULL", [now, session_id])
            self._queue(CallKind.SESSION_HEARTBEAT, session_id, {"at": now})

    def end_session(self, session_id: str, ended_at: float, exit_code: int | None) -> LocalSession:
        with self.db.conn:
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
        return self._session(self.db.table("play_sessions").get(session_id))

    def sessions(self, product_id: str | None = None) -> list[LocalSession]:
        where, args = ("product_id = ?", [product_id]) if product_id else (None, None)
        return [self._session(r) for r in self.db.table("play_sessions").rows_where(
            where, args, order_by="started_at")]

    def open_sessions(self) -> list[LocalSession]:
        return [self._session(r) for r in self.db.table("play_sessions").rows_where(
            "ended_at IS NULL")]

    # -- outbox -------------------------------------------------------------------------------
    def _queue(self, kind: CallKind, key: str, payload: dict[str, Any]) -> None:
        self.db.table("outbox").insert(
            {"seq": None, "kind": kind.value, "key": key, "payload": json.dumps(payload),
             "created_at": time.time(), "attempts": 0})

    def queue(self, kind: CallKind, key: str, payload: dict[str, Any]) -> None:
        with self.db.conn:
            self._queue(kind, key, payload)

    def pending(self, limit: int = 500) -> list[OutboxCall]:
        rows = self.db.execute("SELECT seq, kind, key, payload FROM outbox ORDER BY seq LIMIT ?",
                               [limit]).fetchall()
        return [OutboxCall(int(r[0]), CallKind(r[1]), str(r[2]), json.loads(r[3])) for r in rows]

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def forget(self, seqs: list[int]) -> None:
        if seqs:
            with self.db.conn:
                self.db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(seqs))})",
                                seqs)

    def attempted(self, seq: int) -> None:
        self.db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", [seq])

    # -- saves --------------------------------------------------------------------------------
    def save_bases(self, product_id: str) -> dict[str, Base]:
        return {r["slot"]: Base(r["sha256"], r["version_id"]) for r in
                self.db.table("save_base").rows_where("product_id = ?", [product_id])}

    def set_save_base(self, product_id: str, slot: str, base: Base) -> None:
        self.db.table("save_base").upsert(
            {"product_id": product_id, "slot": slot, "sha256": base.sha256,
             "version_id": base.version_id, "synced_at": time.time()},
            pk=("product_id", "slot"))

    # -- achievements -------------------------------------------------------------------------
    def first_unlock(self, product_id: str, achievement_id: str, now: float) -> bool:
        """Record an unlock locally; False when it was already recorded (sent once only)."""
        table = self.db.table("achievement_seen")
        try:
            table.get((product_id, achievement_id))
            return False
        except sqlite_utils.db.NotFoundError:
            table.insert({"product_id": product_id, "achievement_id": achievement_id,
                          "unlocked_at": now})
            return True
