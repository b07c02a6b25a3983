"""The PostgreSQL engine: psycopg 3 through a connection pool, for several Darkroom nodes
on one database.

Write transactions are serialised across every node by one transaction-scoped advisory
lock, taken first thing: the query modules' read-then-write transactions (an admission's
limits and credits, a completion's status check) then keep SQLite's guarantees as written,
and migrations run once however many nodes start together. Reads take no lock and run in
autocommit. Rows answer by name and by position, as sqlite3.Row does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from server.store.dialect import POSTGRESQL, placeholders
from server.store.migrations import migrate

# pg_advisory_xact_lock key: 'Darkroom' in ASCII, so it is recognisable in pg_locks.
WRITE_LOCK = 0x4461726B726F6F6D


class Row(tuple):
    """A row readable by position and by column name (`dict(row)` works)."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def row_factory(cursor: psycopg.Cursor[Any]) -> Any:
    names = [column.name for column in cursor.description or ()]
    index = {name: i for i, name in enumerate(names)}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._index = index
        return row

    return make


class PgConnection:
    """A pooled connection that takes the query modules' SQL (`?` placeholders)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, args: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        if args:
            return self.raw.execute(placeholders(sql), tuple(args))
        return self.raw.execute(sql)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        if rows:
            cursor.executemany(placeholders(sql), [tuple(row) for row in rows])
        return cursor


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class PostgresEngine:
    dialect = POSTGRESQL
    errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, url: str, pool_size: int = 10) -> None:
        try:  # a clear error at once, not a pool retrying in the background
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            raise ConnectionError(f"cannot reach PostgreSQL at {redacted(url)}: {exc}") from exc
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": row_factory},
            check=ConnectionPool.check_connection,
            name="darkroom",
            open=True,
        )
        with self.transaction() as db:
            self.migrated = migrate(db, POSTGRESQL)  # scripts run by this open
            if self.migrated:
                sync_identities(db)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield PgConnection(conn)

    @contextmanager
    def unlocked(self) -> Iterator[PgConnection]:
        """A write transaction without the advisory lock, for the cluster's queue claims,
        leases and heartbeats: they touch only rows they lock themselves (FOR UPDATE SKIP
        LOCKED), never credits, so they need not wait behind every other writer."""
        with self._pool.connection() as conn, conn.transaction():
            yield PgConnection(conn)

    @contextmanager
    def reading(self) -> Iterator[PgConnection]:
        with self._pool.connection() as conn:
            yield PgConnection(conn)

    def data_version(self) -> int:
        """Moves whenever any transaction that wrote has begun since (like SQLite's
        data_version, if more often): the token cache is cleared on it."""
        with self._pool.connection() as conn:
            row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
        return int(row[0]) if row else 0

    def writable(self) -> bool:
        """A primary (not a standby in recovery) that takes read-write transactions; asked
        without the advisory write lock, which another node may hold for a while."""
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT NOT pg_is_in_recovery()"
                " AND current_setting('default_transaction_read_only') = 'off'"
            ).fetchone()
        return bool(row and row[0])

    def tables(self) -> list[str]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema ="
                " current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
            ).fetchall()
        return [row[0] for row in rows]

    def foreign_keys(self) -> dict[str, set[str]]:
        """table -> the tables its foreign keys point to."""
        found: dict[str, set[str]] = {table: set() for table in self.tables()}
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT tc.table_name, ccu.table_name FROM information_schema.table_constraints"
                " tc JOIN information_schema.constraint_column_usage ccu"
                " ON ccu.constraint_name = tc.constraint_name"
                " AND ccu.constraint_schema = tc.constraint_schema"
                " WHERE tc.constraint_type = 'FOREIGN KEY'"
                " AND tc.table_schema = current_schema()"
            ).fetchall()
        for table, target in rows:
            if target != table:
                found.setdefault(table, set()).add(target)
        return found

    def after_copy(self, db: PgConnection) -> None:
        sync_identities(db)


def sync_identities(db: PgConnection) -> None:
    """Move each table's id sequence past the ids inserted explicitly (the local user,
    copied rows), so the next insert does not collide."""
    rows = db.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND column_name = 'id' AND is_identity = 'YES'"
    ).fetchall()
    for (table,) in rows:
        db.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
        )
