"""The credit ledger: every movement of a user's credits is one appended row.

balance = grants - charges; held = holds - releases. A hold is placed in the transaction
that records a generation, and settled (released, plus a charge on success) in the one
that finishes it, so no crash or race can charge twice, charge for a failed job or lose a
hold; a unique index allows each kind of row once per generation. These functions run on
a connection inside the caller's transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from server.store.database import Connection


@dataclass(frozen=True)
class Balance:
    unlimited: bool
    balance: float
    held: float

    @property
    def available(self) -> float:
        return self.balance - self.held

    def as_json(self) -> dict[str, float | bool | None]:
        if self.unlimited:
            return {"unlimited": True, "balance": None, "held": round(self.held, 4),
                    "available": None}
        return {
            "unlimited": False,
            "balance": round(self.balance, 4),
            "held": round(self.held, 4),
            "available": round(self.available, 4),
        }


def balance(db: Connection, user_id: int) -> Balance:
    row = db.execute(
        "SELECT u.unlimited, COALESCE(SUM(CASE l.kind"
        "  WHEN 'grant' THEN l.amount WHEN 'charge' THEN -l.amount END), 0),"
        " COALESCE(SUM(CASE l.kind"
        "  WHEN 'hold' THEN l.amount WHEN 'release' THEN -l.amount END), 0)"
        " FROM users u LEFT JOIN ledger l ON l.user_id = u.id WHERE u.id = ? GROUP BY u.id",
        (user_id,),
    ).fetchone()
    if row is None:
        raise KeyError(f"no user {user_id}")
    return Balance(bool(row[0]), _credits(row[1]), _credits(row[2]))


def _credits(total: float) -> float:
    """A sum of ledger amounts without float residue: holds and releases summed in another
    row order (as after `db copy` to PostgreSQL) leave e.g. -2.8e-17, which would show as
    a held of -0.0. Adding 0.0 turns -0.0 into 0.0."""
    return round(float(total), 9) + 0.0


def grant(db: Connection, user_id: int, amount: float, note: str | None = None) -> None:
    db.execute(
        "INSERT INTO ledger (user_id, kind, amount, note, created_at) VALUES (?, 'grant', ?, ?, ?)",
        (user_id, amount, note, time.time()),
    )


def hold(db: Connection, user_id: int, generation_id: int, amount: float) -> None:
    db.execute(
        "INSERT INTO ledger (user_id, generation_id, kind, amount, created_at)"
        " VALUES (?, ?, 'hold', ?, ?)",
        (user_id, generation_id, amount, time.time()),
    )


def settle(db: Connection, generation_id: int, charge: float | None) -> None:
    """Release the generation's hold and, if it succeeded, charge what it cost."""
    now = time.time()
    db.execute(
        "INSERT INTO ledger (user_id, generation_id, kind, amount, created_at)"
        " SELECT user_id, generation_id, 'release', amount, ? FROM ledger"
        " WHERE generation_id = ? AND kind = 'hold'",
        (now, generation_id),
    )
    if charge is not None:
        db.execute(
            "INSERT INTO ledger (user_id, generation_id, kind, amount, created_at)"
            " SELECT user_id, id, 'charge', ?, ? FROM generations WHERE id = ?",
            (charge, now, generation_id),
        )


def charged_total(db: Connection, user_id: int) -> float:
    row = db.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE user_id = ? AND kind = 'charge'",
        (user_id,),
    ).fetchone()
    return float(row[0])
