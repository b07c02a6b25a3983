"""Webhook deliveries and the users' signing secrets: the rows behind server/jobs/webhooks.py.

A generation that asked for a webhook gets its delivery row at submit, in the transaction
that records it (state 'waiting', with the URL and the base its links are rendered
under). The transaction that ends the generation (completed or failed, however) arms it:
'pending', due at once. So a crash can lose neither the generation's end nor its webhook.
States: waiting -> pending -> delivered | failed (refused for good) | gave_up (24 h).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Sequence
from typing import Any

from server.store.database import Connection, Database

SECRET_PREFIX = "whsec_"
FINISHED = ("delivered", "failed", "gave_up")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def ensure_secret(db: Connection, user_id: int) -> str:
    """The user's signing secret, created on first need (inside the caller's transaction)."""
    row = db.execute("SELECT secret FROM webhook_secrets WHERE user_id = ?", (user_id,))
    found = row.fetchone()
    if found:
        return str(found[0])
    secret = new_secret()
    db.execute(
        "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES (?, ?, ?)",
        (user_id, secret, time.time()),
    )
    return secret


def register(db: Connection, request_id: str, user_id: int, url: str, base_url: str) -> None:
    """At submit, in the transaction that records the generation: its delivery, waiting."""
    ensure_secret(db, user_id)
    db.execute(
        "INSERT INTO webhook_deliveries (request_id, user_id, url, base_url, webhook_id, state,"
        " created_at) VALUES (?, ?, ?, ?, ?, 'waiting', ?)",
        (request_id, user_id, url, base_url, "msg_" + secrets.token_hex(16), time.time()),
    )


def arm(db: Connection, generation_id: int) -> None:
    """In the transaction that ends a generation: its delivery (if any) is due now."""
    now = time.time()
    db.execute(
        "UPDATE webhook_deliveries SET state = 'pending', ended_at = ?, next_attempt_at = ?"
        " WHERE state = 'waiting'"
        " AND request_id = (SELECT request_id FROM generations WHERE id = ?)",
        (now, now, generation_id),
    )


class WebhookQueries(Database):
    def webhook_secret(self, user_id: int) -> str:
        with self.transaction() as db:
            return ensure_secret(db, user_id)

    def webhook_secret_of(self, name: str) -> str | None:
        """The secret of the user called `name` (None: no such user)."""
        with self.transaction() as db:
            row = db.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            return ensure_secret(db, int(row[0])) if row else None

    def webhook_delivery(self, request_id: str) -> dict[str, Any] | None:
        return self.fetch_one(
            "SELECT * FROM webhook_deliveries WHERE request_id = ?", (request_id,)
        )

    def due_webhooks(self, now: float, skip: Sequence[int], limit: int) -> list[dict[str, Any]]:
        """Pending deliveries due by `now`, soonest first, leaving out those in `skip`."""
        rows = self.fetch_all(
            "SELECT * FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?",
            (now, limit + len(skip)),
        )
        return [row for row in rows if row["id"] not in skip][:limit]

    def record_webhook_attempt(
        self,
        delivery_id: int,
        state: str,
        status: int | None,
        error: str | None,
        next_attempt_at: float | None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1,"
                " last_attempt_at = ?, last_status = ?, last_error = ?, next_attempt_at = ?"
                " WHERE id = ?",
                (state, time.time(), status, error, next_attempt_at, delivery_id),
            )

    def webhook_counts(self) -> dict[str, int]:
        """Deliveries by state (the metrics' outcome counter)."""
        rows = self.fetch_all(
            "SELECT state, COUNT(*) AS n FROM webhook_deliveries GROUP BY state"
        )
        return {row["state"]: int(row["n"]) for row in rows}
