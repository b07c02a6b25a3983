"""Secrets in the database, so that every node shares them: the image links' signing key."""

from __future__ import annotations

import secrets
import time

from server.store.database import Database

SIGNING_KEY = "signing_key"


class KeyQueries(Database):
    def signing_key(self, legacy: bytes | None = None) -> bytes:
        """The key that signs temporary image links, the same on every node. Created on
        first use from `legacy` (a data dir's old vault/signing.key, so the links it
        signed stay valid) or at random; the first node to store one wins."""
        row = self.fetch_one("SELECT value FROM secrets WHERE name = ?", (SIGNING_KEY,))
        if row is None:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO NOTHING",
                    (SIGNING_KEY, (legacy or secrets.token_bytes(32)).hex(), time.time()),
                )
            row = self.fetch_one("SELECT value FROM secrets WHERE name = ?", (SIGNING_KEY,))
        assert row is not None
        return bytes.fromhex(row["value"])
