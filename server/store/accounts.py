"""Users, their API tokens and credits: the account rows.

Tokens read `drk_<token id>_<secret>`: the id finds the row, the secret (256 random bits)
is stored only as a SHA-256 hash and compared in constant time. Who a request acts as is
api/auth.py's question.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from server.store import Store, ledger
from server.store.database import insert_id

LOCAL_USER_ID = 1
TOKEN_PREFIX = "drk"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
TOKEN_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    unlimited: bool
    builtin: bool = False
    admin: bool = False
    # The user's own limits; None: the server's --max-active-per-user / --poll-rate.
    max_active: int | None = None
    poll_rate: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> User:
        return cls(
            row["id"],
            row["name"],
            bool(row["unlimited"]),
            bool(row["builtin"]),
            bool(row.get("admin")),
            row.get("max_active"),
            row.get("poll_rate"),
        )


# `users set`: a limit left as it is (None means "back to the server's default").
UNCHANGED: Any = object()


class AccountError(Exception):
    """An operator's account command cannot be done (unknown user, taken name...)."""


def _check_limits(max_active: int | None, poll_rate: float | None) -> None:
    if max_active is not None and max_active < 0:
        raise AccountError(f"--max-active must be 0 (no limit) or more, not {max_active}")
    if poll_rate is not None and not (math.isfinite(poll_rate) and poll_rate >= 0):
        raise AccountError(f"--poll-rate must be 0 (no limit) or more, not {poll_rate:g}")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Accounts:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Tokens already checked, kept while no other connection has written: `darkroom
        # users` (add, token, revoke, credits) runs in its own process (or on another
        # node), and the database's data_version tells when it has. In this process only
        # revoke() can invalidate a token, and it clears them itself.
        self._checked: dict[str, User] = {}
        self._checked_at = -1

    def add_user(
        self,
        name: str,
        credits: float | None,
        max_active: int | None = None,
        poll_rate: float | None = None,
        admin: bool = False,
    ) -> tuple[User, str]:
        """Create a user (credits None: unlimited; limits None: the server's) and their
        first token."""
        if not NAME_PATTERN.fullmatch(name):
            raise AccountError(
                f"invalid user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'"
            )
        _check_limits(max_active, poll_rate)
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"user {name!r} already exists")
            user_id = insert_id(
                db,
                "INSERT INTO users (name, unlimited, created_at, max_active, poll_rate, admin)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, int(credits is None), time.time(), max_active, poll_rate, int(admin)),
            )
            user = User(user_id, name, credits is None, False, admin, max_active, poll_rate)
            if credits:
                ledger.grant(db, user.id, credits, "initial credits")
            token = self._issue(db, user.id)
        return user, token

    def set_admin(self, name: str, admin: bool) -> User:
        user = self._user(name)
        with self.store.transaction() as db:
            db.execute("UPDATE users SET admin = ? WHERE id = ?", (int(admin), user.id))
        self._checked = {}
        return self._user(name)

    def new_token(self, name: str) -> str:
        with self.store.transaction() as db:
            return self._issue(db, self._user(name).id)

    def revoke(self, name: str) -> int:
        """Revoke every token of the user; returns how many were valid."""
        user = self._user(name)
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                (time.time(), user.id),
            )
            revoked = cursor.rowcount
        self._checked = {}
        return revoked

    def set_limits(
        self, name: str, max_active: int | None = UNCHANGED, poll_rate: float | None = UNCHANGED
    ) -> User:
        """Set a user's own limits (None: back to the server's default). Servers see the
        change at their next request: the database's data_version moves."""
        _check_limits(
            None if max_active is UNCHANGED else max_active,
            None if poll_rate is UNCHANGED else poll_rate,
        )
        user = self._user(name)
        changes = {
            column: value
            for column, value in (("max_active", max_active), ("poll_rate", poll_rate))
            if value is not UNCHANGED
        }
        if changes:
            with self.store.transaction() as db:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                db.execute(
                    f"UPDATE users SET {assignments} WHERE id = ?", (*changes.values(), user.id)
                )
        self._checked = {}
        return self._user(name)

    def add_credits(self, name: str, amount: float) -> ledger.Balance:
        user = self._user(name)
        with self.store.transaction() as db:
            ledger.grant(db, user.id, amount, "credits add")
            return ledger.balance(db, user.id)

    def balance(self, user_id: int) -> ledger.Balance:
        with self.store.reading() as db:
            return ledger.balance(db, user_id)

    def summaries(self) -> list[dict[str, Any]]:
        """Every user with credits, usage and token counts, for `darkroom users list`."""
        rows = self.store.fetch_all(
            "SELECT u.*, (SELECT COUNT(*) FROM tokens t WHERE t.user_id = u.id"
            " AND t.revoked_at IS NULL) AS tokens,"
            " (SELECT COUNT(*) FROM generations g WHERE g.user_id = u.id) AS generations,"
            " (SELECT COUNT(*) FROM generations g WHERE g.user_id = u.id"
            " AND g.status IN ('pending', 'processing')) AS active"
            " FROM users u ORDER BY u.id"
        )
        with self.store.reading() as db:
            for row in rows:
                row["credits"] = ledger.balance(db, row["id"]).as_json()
                row["charged"] = round(ledger.charged_total(db, row["id"]), 4)
        return rows

    def has_users(self) -> bool:
        row = self.store.fetch_one("SELECT 1 AS yes FROM users WHERE builtin = 0 LIMIT 1")
        return row is not None

    def local_user(self) -> User:
        row = self.store.fetch_one("SELECT * FROM users WHERE id = ?", (LOCAL_USER_ID,))
        assert row is not None, "the migrations create the local user"
        return User.from_row(row)

    def by_token(self, token: str) -> User | None:
        version = self.store.data_version()
        if version != self._checked_at:
            self._checked, self._checked_at = {}, version
        user = self._checked.get(token)
        if user is None:
            user = self._look_up(token)
            if user is not None:
                if len(self._checked) >= 4096:
                    self._checked = {}
                self._checked[token] = user
        return user

    def _look_up(self, token: str) -> User | None:
        prefix, _, rest = token.partition("_")
        token_id, _, secret = rest.partition("_")
        # ASCII digits that fit the 64-bit id column (str.isdigit() also takes "²").
        if prefix != TOKEN_PREFIX or not secret or not TOKEN_ID.fullmatch(token_id):
            return None
        row = self.store.fetch_one(
            "SELECT t.secret_sha256, u.* FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.id = ? AND t.revoked_at IS NULL",
            (int(token_id),),
        )
        if row is None or not hmac.compare_digest(row["secret_sha256"], _digest(secret)):
            return None
        return User.from_row(row)

    def _user(self, name: str) -> User:
        row = self.store.fetch_one("SELECT * FROM users WHERE name = ? AND builtin = 0", (name,))
        if row is None:
            raise AccountError(f"no user named {name!r}")
        return User.from_row(row)

    @staticmethod
    def _issue(db: Any, user_id: int) -> str:
        secret = secrets.token_urlsafe(32)
        token_id = insert_id(
            db,
            "INSERT INTO tokens (user_id, secret_sha256, created_at) VALUES (?, ?, ?)",
            (user_id, _digest(secret), time.time()),
        )
        return f"{TOKEN_PREFIX}_{token_id}_{secret}"
