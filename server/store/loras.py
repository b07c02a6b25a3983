"""The LoRA catalog's rows: files by content hash, usage statistics, fit verdicts per model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from server.store.database import Database


class LoraQueries(Database):
    def loras(self, available_only: bool = True) -> list[dict[str, Any]]:
        clause = "WHERE available = 1" if available_only else ""
        return self.fetch_all(f"SELECT * FROM loras {clause} ORDER BY id")

    def lora_by_path(self, path: str) -> dict[str, Any] | None:
        return self.fetch_one("SELECT * FROM loras WHERE path = ?", (path,))

    def lora_by_id(self, lora_id: int) -> dict[str, Any] | None:
        return self.fetch_one("SELECT * FROM loras WHERE id = ?", (lora_id,))

    def lora_verdicts(self, model_key: str) -> dict[str, str | None]:
        """sha256 -> None (fits) or why not, for the files checked against this model."""
        rows = self.fetch_all(
            "SELECT sha256, reason FROM lora_checks WHERE model_key = ?", (model_key,)
        )
        return {row["sha256"]: row["reason"] for row in rows}

    def save_lora_verdicts(self, model_key: str, verdicts: dict[str, str | None]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO lora_checks (sha256, model_key, reason, checked_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (sha256, model_key) DO UPDATE"
                " SET reason = excluded.reason, checked_at = excluded.checked_at",
                [(sha256, model_key, reason, time.time()) for sha256, reason in verdicts.items()],
            )

    def sync_loras(self, found: Sequence[dict[str, Any]]) -> None:
        """Make the catalog match a scan: upsert by content hash, mark the rest unavailable."""
        with self.transaction() as db:
            db.execute("UPDATE loras SET available = 0")
            for lora in found:
                db.execute(
                    "INSERT INTO loras (sha256, path, file_size, file_mtime, meta_json, available)"
                    " VALUES (?, ?, ?, ?, ?, 1)"
                    " ON CONFLICT(sha256) DO UPDATE SET path = excluded.path,"
                    " file_size = excluded.file_size, file_mtime = excluded.file_mtime,"
                    " meta_json = excluded.meta_json, available = 1",
                    [lora[key] for key in ("sha256", "path", "file_size", "file_mtime",
                                           "meta_json")],
                )
