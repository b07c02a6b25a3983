"""Presets: a user's saved settings, by name."""

from __future__ import annotations

import json
import time
from typing import Any

from server.store.database import Database


class PresetQueries(Database):
    def save_preset(
        self,
        user_id: int,
        name: str,
        settings: dict[str, Any],
        loras: list[dict[str, Any]],
        tags: list[str],
    ) -> tuple[dict[str, Any], bool]:
        """Insert or update the user's preset by name; returns the row and whether it is new."""
        now = time.time()
        key = (user_id, name)
        with self.transaction() as db:
            find = "SELECT * FROM presets WHERE user_id = ? AND name = ?"
            existed = db.execute(find, key).fetchone()
            db.execute(
                "INSERT INTO presets (user_id, name, settings_json, loras_json, tags_json,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(user_id, name) DO UPDATE SET settings_json = excluded.settings_json,"
                " loras_json = excluded.loras_json, tags_json = excluded.tags_json,"
                " updated_at = excluded.updated_at",
                (*key, json.dumps(settings), json.dumps(loras), json.dumps(tags), now, now),
            )
            row = dict(db.execute(find, key).fetchone())
        return row, existed is None

    def presets(self, user_id: int) -> list[dict[str, Any]]:
        return self.fetch_all("SELECT * FROM presets WHERE user_id = ? ORDER BY name", (user_id,))

