"""The database connection: SQLite in WAL mode, one connection shared by the event loop and
the worker threads, serialised by a lock (every statement is short, and SQLite serialises
writers anyway). The query modules beside this one build on it; they are the only places
that hold SQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.store.migrations import migrate

# What a transaction hands the functions that run inside it (ledger, admission checks).
Connection = sqlite3.Connection


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged job survives power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self.transaction() as db:
            migrate(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """The connection for several reads in a row (no write lock taken)."""
        with self._lock:
            yield self._db

    def fetch_all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args).fetchall()]

    def fetch_one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.fetch_all(sql, args)
        return rows[0] if rows else None

    def data_version(self) -> int:
        """Changes whenever another connection (a `darkroom users` command) has committed."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def writable(self) -> bool:
        try:
            with self.transaction() as db:
                db.execute("PRAGMA user_version")
            return True
        except sqlite3.Error:
            return False
