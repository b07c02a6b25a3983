"""Per-user options (the `user_options` table): what a user set through AUTOMATIC1111's
POST /sdapi/v1/options that Darkroom keeps, such as `sd_model_checkpoint`, the title of
their default checkpoint. Values are JSON."""

from __future__ import annotations

import json
import time
from typing import Any

from server.store.database import Database

DEFAULT_CHECKPOINT = "sd_model_checkpoint"


def get(db: Database, user_id: int) -> dict[str, Any]:
    rows = db.fetch_all("SELECT name, value_json FROM user_options WHERE user_id = ?", (user_id,))
    return {row["name"]: json.loads(row["value_json"]) for row in rows}


def put(db: Database, user_id: int, values: dict[str, Any]) -> None:
    now = time.time()
    with db.transaction() as conn:
        for name, value in values.items():
            conn.execute(
                "INSERT INTO user_options (user_id, name, value_json, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, name)"
                " DO UPDATE SET value_json = excluded.value_json, updated_at = excluded.updated_at",
                (user_id, name, json.dumps(value), now),
            )
