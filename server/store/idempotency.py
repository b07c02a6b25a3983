"""Idempotency keys: per user, the request a key was first used for (a hash), the claim of
the request admitting under it, the generation it admitted and the answer it got."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from server.store.database import Connection, Database

TTL_SECONDS = 24 * 3600
PURGE_EVERY_SECONDS = 600.0


@dataclass(frozen=True)
class KeyRecord:
    """A key another request holds: `request_id` None while it is being admitted."""

    fingerprint: str
    request_id: str | None
    status: int | None
    answer: Any  # the recorded answer's JSON body, None if none was recorded


class IdempotencyQueries(Database):
    _purged_at = 0.0

    def claim_key(
        self, user_id: int, key: str, fingerprint: str, claim: str, stale_after: float
    ) -> KeyRecord | None:
        """Take `key` for a new request under `claim` (None), or the record of the request
        that holds it. A key older than 24 h, or claimed over `stale_after` seconds ago by
        a request that admitted nothing (it died), is taken over."""
        now = time.time()
        with self.transaction() as db:
            if now - self._purged_at > PURGE_EVERY_SECONDS:
                expired_before = now - TTL_SECONDS
                db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (expired_before,))
                self._purged_at = now
            row = db.execute(
                "SELECT fingerprint, request_id, response_status, response_json, created_at"
                " FROM idempotency_keys WHERE user_id = ? AND idempotency_key = ?",
                (user_id, key),
            ).fetchone()
            if row is not None:
                fingerprint_held, request_id, status, answer, created_at = tuple(row)
                expired = created_at < now - TTL_SECONDS
                abandoned = request_id is None and created_at < now - stale_after
                if not (expired or abandoned):
                    body = json.loads(answer) if answer is not None else None
                    return KeyRecord(fingerprint_held, request_id, status, body)
            db.execute(
                "INSERT INTO idempotency_keys (user_id, idempotency_key, fingerprint, claim,"
                " created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, idempotency_key)"
                " DO UPDATE SET fingerprint = excluded.fingerprint, claim = excluded.claim,"
                " request_id = NULL, response_status = NULL, response_json = NULL,"
                " created_at = excluded.created_at",
                (user_id, key, fingerprint, claim, now),
            )
            return None

    @staticmethod
    def bind_key(db: Connection, user_id: int, key: str, claim: str, request_id: str) -> bool:
        """In the transaction that admits the generation: tie the key to it. False if the
        claim was lost meanwhile (taken over as abandoned): then nothing may be admitted."""
        cursor = db.execute(
            "UPDATE idempotency_keys SET request_id = ? WHERE user_id = ?"
            " AND idempotency_key = ? AND claim = ? AND request_id IS NULL",
            (request_id, user_id, key, claim),
        )
        return cursor.rowcount == 1

    def record_answer(self, user_id: int, key: str, claim: str, status: int, body: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE idempotency_keys SET response_status = ?, response_json = ?"
                " WHERE user_id = ? AND idempotency_key = ? AND claim = ?",
                (status, json.dumps(body), user_id, key, claim),
            )

    def release_key(self, user_id: int, key: str, claim: str) -> None:
        """The request admitted nothing (refused, invalid, failed): a retry starts afresh."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM idempotency_keys WHERE user_id = ? AND idempotency_key = ?"
                " AND claim = ? AND request_id IS NULL",
                (user_id, key, claim),
            )
