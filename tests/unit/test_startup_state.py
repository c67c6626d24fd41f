"""The engine's state on plain sqlite3 (issue 13, first byte: sqlite-utils, click and pluggy
left the start): the tables are the ones sqlite-utils created, byte for byte, so databases
written by older engines and by this one read the same; the statements keep sqlite-utils'
meaning (an upsert leaves the columns it does not name, an update of a missing task is
refused); and the modules an install's preparation needs load neither sqlite-utils nor
aiohttp."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils

from engine.core.errors import EngineError, ErrorCode
from engine.core.playtime import CallKind
from engine.io.playstate import PlayState
from engine.io.state import InstalledGame, State
from testing.processes import REPO, subprocess_env


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str, str | None]]:
    return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_tables_are_sqlite_utils_tables_byte_for_byte(tmp_path: Path) -> None:
    state = State(tmp_path / "ours")
    PlayState(state.db)
    theirs = sqlite_utils.Database(tmp_path / "theirs.sqlite")
    for table, columns, pk in PlayState._TABLES:
        theirs.table(table).create(columns, pk=pk, if_not_exists=True)
    theirs.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    ours = {name: sql for _, name, sql in _schema(state.db.conn)}
    for _, name, sql in _schema(theirs.conn):
        assert ours[name] == sql, name
    state.close()


def test_an_older_engines_database_is_read_and_written(tmp_path: Path) -> None:
    """A database sqlite-utils made (every table, the schema version) opens without change and
    takes the new statements."""
    State(tmp_path).close()
    db = sqlite_utils.Database(tmp_path / "state.sqlite")
    db.table("installed").upsert({"product_id": "g", "version_id": "1", "path": "/p", "size": 3,
                                  "installed_at": 1.0, "dirty": 0, "previous_version": None},
                                 pk="product_id")
    db.conn.close()
    state = State(tmp_path)
    assert state.installed_game("g") == InstalledGame("g", "1", "/p", 3, 1.0, False, None)
    state.set_installed(InstalledGame("g", "2", "/p", 4, 2.0, True, "1"))
    assert [g.version_id for g in state.installed()] == ["2"]
    state.set_meta("k", "a")
    state.set_meta("k", "b")
    assert state.get_meta("k") == "b"
    task = state.add_task("g", None, "/p")
    assert state.update_task(task.id, backend_task_id="bt").backend_task_id == "bt"
    assert state.task(task.id[:8]).id == task.id  # a unique prefix still finds it
    with pytest.raises(EngineError) as missing:
        state.update_task("nope", backend_task_id="x")
    assert missing.value.code == ErrorCode.TASK_NOT_FOUND
    assert state.latest_task_for("g") == state.task(task.id)
    state.close()


def test_play_state_keeps_its_meaning(tmp_path: Path) -> None:
    state = State(tmp_path)
    play = PlayState(state.db)
    assert play.first_unlock("g", "a1", 1.0) and not play.first_unlock("g", "a1", 2.0)
    play.start_session("s1", "g", 10.0)
    play.end_session("s1", 20.0, 0)
    assert [s.ended_at for s in play.sessions("g")] == [20.0] and play.open_sessions() == []
    with pytest.raises(KeyError):
        play.session("unknown")
    play.queue(CallKind.SESSION_HEARTBEAT, "s1", {"at": 1})
    assert [c.kind for c in play.pending()][-1] is CallKind.SESSION_HEARTBEAT
    state.close()
    # bench/sync.py hands PlayState a sqlite-utils database: that still works
    again = PlayState(sqlite_utils.Database(tmp_path / "state.sqlite"))
    assert len(again.sessions()) == 1


def test_an_installs_preparation_loads_neither_sqlite_utils_nor_aiohttp() -> None:
    script = ("import sys\n"
              "import engine.io.backend_client, engine.io.library_client, engine.io.state\n"
              "import engine.io.playstate, engine.jobs.context\n"
              "print(sorted(m for m in ('aiohttp', 'sqlite_utils', 'pluggy') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=subprocess_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "[]"


def test_a_statement_failing_inside_a_transaction_leaves_nothing_of_it(tmp_path: Path) -> None:
    """Review (session 23): ``with conn:`` opened no transaction on the engine's autocommit
    connection, so a play session stayed recorded without its outbox call when the second
    statement failed. A real SQLite failure (a trigger aborting the outbox insert) now rolls the
    first statement back too; the journal's two tables likewise."""
    state = State(tmp_path)
    play = PlayState(state.db)
    conn = state.db.conn
    conn.execute("CREATE TRIGGER no_outbox BEFORE INSERT ON outbox "
                 "BEGIN SELECT RAISE(ABORT, 'outbox refused'); END")
    with pytest.raises(sqlite3.DatabaseError, match="outbox refused"):
        play.start_session("s1", "tiny-tactics", 100.0)
    assert conn.execute("SELECT COUNT(*) FROM play_sessions").fetchone()[0] == 0
    assert not conn.in_transaction
    conn.execute("DROP TRIGGER no_outbox")
    play.start_session("s1", "tiny-tactics", 100.0)  # and it works once the fault is gone
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1

    conn.execute("CREATE TRIGGER no_files BEFORE INSERT ON file_done "
                 "BEGIN SELECT RAISE(ABORT, 'journal refused'); END")
    with pytest.raises(sqlite3.DatabaseError, match="journal refused"):
        state.record_progress("t1", [1, 2], [0])
    assert state.done_blocks("t1") == set()
    state.close()
