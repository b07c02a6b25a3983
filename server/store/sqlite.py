"""The SQLite engine: WAL mode, one connection shared by the event loop and the worker
threads, serialised by a lock (every statement is short, and SQLite serialises writers
anyway). A write transaction is BEGIN IMMEDIATE: writers never interleave."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.store.dialect import SQLITE
from server.store.migrations import migrate


class SqliteEngine:
    dialect = SQLITE
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged job survives power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self.transaction() as db:
            self.migrated = migrate(db, SQLITE)  # scripts run by this open

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def data_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def writable(self) -> bool:
        """The file and its directory (where the WAL lives) can be written. Neither BEGIN
        IMMEDIATE, which waits for another process's writer, nor the connection's lock,
        which a worker thread holds while its write waits: a probe must not wait."""
        return all(os.access(one, os.W_OK) for one in (self.path, self.path.parent))

    def tables(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        return [row[0] for row in rows]

    def foreign_keys(self) -> dict[str, set[str]]:
        """table -> the tables its foreign keys point to."""
        found: dict[str, set[str]] = {}
        with self._lock:
            for table in self.tables():
                rows = self._db.execute(f"PRAGMA foreign_key_list({table})").fetchall()
                found[table] = {row["table"] for row in rows} - {table}
        return found

    def after_copy(self, db: sqlite3.Connection) -> None:
        """Nothing to do: SQLite's ids follow the largest one."""
