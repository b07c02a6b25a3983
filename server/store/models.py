"""The model library's rows: checkpoints by content hash, with their classification."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.store.database import Database

MODEL_COLUMNS = (
    "sha256", "path", "name", "file_size", "file_mtime", "format", "base_model", "reason"
)


class ModelQueries(Database):
    def models(self, available_only: bool = True) -> list[dict[str, Any]]:
        clause = "WHERE available = 1" if available_only else ""
        return self.fetch_all(f"SELECT * FROM models {clause} ORDER BY id")

    def model_by_path(self, path: str) -> dict[str, Any] | None:
        return self.fetch_one("SELECT * FROM models WHERE path = ?", (path,))

    def sync_models(self, found: Sequence[dict[str, Any]]) -> None:
        """Make the library match a scan: upsert by content hash, mark the rest unavailable."""
        with self.transaction() as db:
            db.execute("UPDATE models SET available = 0")
            for model in found:
                db.execute(
                    "INSERT INTO models (sha256, path, name, file_size, file_mtime, format,"
                    " base_model, reason, available) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)"
                    " ON CONFLICT(sha256) DO UPDATE SET path = excluded.path,"
                    " name = excluded.name, file_size = excluded.file_size,"
                    " file_mtime = excluded.file_mtime, format = excluded.format,"
                    " base_model = excluded.base_model, reason = excluded.reason, available = 1",
                    [model[key] for key in MODEL_COLUMNS],
                )
