"""The few table operations the engine's SQLite state needs, on plain ``sqlite3``.

Why not sqlite-utils: importing it (with click and pluggy) cost ~35-45 ms of every in-process
command's start (issue 13, first byte), for a handful of INSERT/UPSERT/UPDATE statements. The
tables it created are created here with the very same DDL (``CREATE TABLE "t" ( "col" TYPE
...)``), so databases written by either read the same.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL"}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(table: str, columns: Mapping[str, type], pk: str | Sequence[str]) -> str:
    """The DDL sqlite-utils wrote for ``Table.create(columns, pk=pk, if_not_exists=True)``."""
    keys = (pk,) if isinstance(pk, str) else tuple(pk)
    lines = []
    for name, kind in columns.items():
        line = f"   {_q(name)} {_SQL_TYPES[kind]}"
        if len(keys) == 1 and name == keys[0]:
            line += " PRIMARY KEY"
        lines.append(line)
    if len(keys) > 1:
        lines.append(f"   PRIMARY KEY ({', '.join(_q(k) for k in keys)})")
    return f"CREATE TABLE IF NOT EXISTS {_q(table)} (\n" + ",\n".join(lines) + "\n)"


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """The statements inside as one transaction: committed together or rolled back together.
    ``with conn:`` is not that on the engine's autocommit connections (``isolation_level``
    None): it starts nothing, so each statement committed alone and a failure halfway left the
    first half (a play session recorded without its outbox call). IMMEDIATE takes the write
    lock at once: the daemon and a CLI process never deadlock upgrading a read lock. Inside a
    transaction already, the statements join it."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Database:
    """A connection and the statements built from column dicts. ``conn`` and ``execute`` are
    what sqlite-utils' ``Database`` offered under the same names (callers use both)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows readable by column name (``row["id"]``)."""
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, params).fetchall()

    def create(self, table: str, columns: Mapping[str, type], pk: str | Sequence[str]) -> None:
        self.conn.execute(create_table_sql(table, columns, pk))

    def insert(self, table: str, row: Mapping[str, Any]) -> None:
        cols = ", ".join(_q(c) for c in row)
        marks = ", ".join("?" * len(row))
        self.conn.execute(f"INSERT INTO {_q(table)} ({cols}) VALUES ({marks})", list(row.values()))

    def upsert(self, table: str, row: Mapping[str, Any], pk: str | Sequence[str]) -> None:
        """Insert, or update the given columns of the row with these primary key values (the
        other columns keep their values, as sqlite-utils' upsert did)."""
        keys = (pk,) if isinstance(pk, str) else tuple(pk)
        cols = ", ".join(_q(c) for c in row)
        marks = ", ".join("?" * len(row))
        sets = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in row if c not in keys)
        action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
        self.conn.execute(f"INSERT INTO {_q(table)} ({cols}) VALUES ({marks}) ON CONFLICT "
                          f"({', '.join(_q(k) for k in keys)}) {action}", list(row.values()))

    def update(self, table: str, where: Mapping[str, Any], fields: Mapping[str, Any]) -> int:
        """UPDATE the rows matching ``where`` (column = value, all of them); the row count."""
        if not fields:
            return len(self.rows(f"SELECT 1 FROM {_q(table)} WHERE "
                                 + " AND ".join(f"{_q(c)} = ?" for c in where),
                                 list(where.values())))
        sets = ", ".join(f"{_q(c)} = ?" for c in fields)
        cond = " AND ".join(f"{_q(c)} = ?" for c in where)
        cur = self.conn.execute(f"UPDATE {_q(table)} SET {sets} WHERE {cond}",
                                [*fields.values(), *where.values()])
        return cur.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)
