"""`darkroom db copy`: move a database (a single box's SQLite file) into another (the
cluster's PostgreSQL), verified by row counts and every user's ledger balance.

Every table is copied, in the order its foreign keys need, so tables that later
migrations add come along without changes here; the target must be empty (a freshly
migrated database: only the built-in local user and, if a node has started, the signing
key, which the source's then replaces so its links stay valid). Ids are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.store import Store, ledger
from server.store.database import Connection

NOT_COPIED = {"schema_version"}  # each database keeps its own
# Rows a freshly migrated target already has: kept (users) or replaced (secrets).
ON_CONFLICT = {
    "users": " ON CONFLICT (id) DO NOTHING",
    "secrets": " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
    " created_at = excluded.created_at",
}


class CopyError(Exception):
    """The copy cannot be done, or did not verify (then nothing was written)."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)
    balances: int = 0


def copy_database(source: Store, target: Store) -> CopyReport:
    """Copy every row of `source` into the empty `target`, in one target transaction."""
    order = _table_order(source)
    missing = [table for table in order if table not in set(target.engine.tables())]
    if missing:
        raise CopyError(f"the target lacks table(s) {', '.join(missing)}: migrate it first")
    _require_empty(target, order)
    report = CopyReport()
    with target.transaction() as db:
        for table in order:
            rows = source.fetch_all(f"SELECT * FROM {table}")
            report.rows[table] = len(rows)
            if not rows:
                continue
            columns = list(rows[0])
            marks = ", ".join("?" * len(columns))
            db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                + ON_CONFLICT.get(table, ""),
                [[row[column] for column in columns] for row in rows],
            )
        target.engine.after_copy(db)
        _verify(source, db, report)
    return report


def _table_order(source: Store) -> list[str]:
    """The source's tables, each after the tables its foreign keys point to."""
    needs = {t: deps for t, deps in source.engine.foreign_keys().items() if t not in NOT_COPIED}
    order: list[str] = []
    while needs:
        ready = sorted(t for t, deps in needs.items() if not deps - set(order))
        if not ready:
            raise CopyError(f"foreign keys in a circle among {sorted(needs)}")
        order.extend(ready)
        for table in ready:
            del needs[table]
    return order


def _require_empty(target: Store, tables: list[str]) -> None:
    for table in tables:
        if table == "secrets":
            continue
        where = " WHERE builtin = 0" if table == "users" else ""
        row = target.fetch_one(f"SELECT COUNT(*) AS n FROM {table}{where}")
        if row and row["n"]:
            raise CopyError(
                f"the target is not empty ({table} has {row['n']} row(s)): copy only into"
                " a new database"
            )


def _verify(source: Store, db: Connection, report: CopyReport) -> None:
    """Counts and balances, read inside the copy's transaction: a mismatch rolls it back."""
    for table, count in report.rows.items():
        copied = int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        if copied != count:
            raise CopyError(f"{table}: {count} row(s) in the source, {copied} copied")
    with source.reading() as src:
        users = [row[0] for row in src.execute("SELECT id FROM users").fetchall()]
        for user_id in users:
            before, after = ledger.balance(src, user_id), ledger.balance(db, user_id)
            moved = abs(before.balance - after.balance) + abs(before.held - after.held)
            if moved > 1e-9:
                raise CopyError(f"user {user_id}: ledger {before} in the source, {after} copied")
            report.balances += 1
