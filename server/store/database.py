"""The database: SQLite (a file, the default) or PostgreSQL (a `postgresql://` URL, for
several nodes), behind one interface. The query modules beside this one build on it; they
are the only places that hold SQL, written once for both engines (dialect.py says how).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from server.store.dialect import json_number, json_text


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What a transaction hands the functions that run inside it (ledger, admission
    checks): sqlite3's connection, or the PostgreSQL engine's wrapper of psycopg's."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any: ...


class Engine(Protocol):
    dialect: str
    migrated: int  # migration scripts this open ran
    errors: tuple[type[Exception], ...]

    def transaction(self) -> AbstractContextManager[Connection]: ...

    def reading(self) -> AbstractContextManager[Connection]: ...

    def data_version(self) -> int: ...

    def writable(self) -> bool: ...

    def tables(self) -> list[str]: ...

    def foreign_keys(self) -> dict[str, set[str]]: ...

    def after_copy(self, db: Any) -> None: ...

    def close(self) -> None: ...


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_engine(target: str | Path) -> Engine:
    """A `postgresql://` URL, or a SQLite file (a path, or `sqlite:PATH`)."""
    if is_postgres(target):
        from server.store.postgres import PostgresEngine

        return PostgresEngine(str(target))
    from server.store.sqlite import SqliteEngine

    text = str(target)
    return SqliteEngine(Path(text.removeprefix("sqlite:")))


class Database:
    # On PostgreSQL with several nodes, the node this process is: a job it did not claim
    # (or whose lease it lost) is neither started, completed nor released by it.
    node_id: str | None = None

    def _owned(self) -> tuple[str, tuple[Any, ...]]:
        if self.node_id is None:
            return "", ()
        return " AND node_id = ?", (self.node_id,)

    def __init__(self, target: str | Path) -> None:
        self.engine = open_engine(target)
        self.dialect = self.engine.dialect

    def close(self) -> None:
        self.engine.close()

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction: writers never interleave (on either engine)."""
        return self.engine.transaction()

    def reading(self) -> AbstractContextManager[Connection]:
        """A connection for several reads in a row (no write lock taken)."""
        return self.engine.reading()

    def fetch_all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.engine.reading() as db:
            return [dict(row) for row in db.execute(sql, args).fetchall()]

    def fetch_one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.fetch_all(sql, args)
        return rows[0] if rows else None

    def data_version(self) -> int:
        """Changes whenever another connection (a `darkroom users` command, another node)
        has committed."""
        return self.engine.data_version()

    def writable(self) -> bool:
        """Whether writes would be accepted, found without taking the write lock: a health
        probe must answer while another process holds it (a migration, a long backup)."""
        try:
            return self.engine.writable()
        except self.engine.errors:
            return False

    def json_text(self, column: str, path: str) -> str:
        return json_text(self.dialect, column, path)

    def json_number(self, column: str, path: str) -> str:
        return json_number(self.dialect, column, path)


def insert_id(db: Connection, sql: str, args: Sequence[Any]) -> int:
    """Run an INSERT and return the new row's id (RETURNING works on both engines)."""
    return int(db.execute(f"{sql} RETURNING id", args).fetchall()[0][0])

