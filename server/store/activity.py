"""What the console's operator page shows across users: the active queue, and activity
over the last hour drawn from the generations' own timestamps (no extra bookkeeping)."""

from __future__ import annotations

import time
from typing import Any

from server.store.database import Database

MINUTE = 60.0


class ActivityQueries(Database):
    def active_generations(self) -> list[dict[str, Any]]:
        """Every user's pending and processing generations, oldest first, with the user."""
        return self.fetch_all(
            "SELECT g.id, g.request_id, g.status, g.prompt, g.created_at, g.started_at,"
            " g.provider, g.node_id, u.name AS user_name FROM generations g"
            " JOIN users u ON u.id = g.user_id"
            " WHERE g.status IN ('pending', 'processing') ORDER BY g.created_at, g.id"
        )

    def activity(self, minutes: int = 60, now: float | None = None) -> dict[str, Any]:
        """Per minute of the last `minutes`: images finished and queue depth (jobs created
        but not yet started at the minute's end); and render seconds per image by device
        and model over the same window."""
        now = time.time() if now is None else now
        start = (now // MINUTE - minutes + 1) * MINUTE
        ends = [start + (i + 1) * MINUTE for i in range(minutes)]
        finished = self.fetch_all(
            "SELECT i.created_at FROM images i WHERE i.created_at >= ?", (start,)
        )
        images = [0] * minutes
        for row in finished:
            index = int((row["created_at"] - start) // MINUTE)
            if 0 <= index < minutes:
                images[index] += 1
        spans = self.fetch_all(
            "SELECT created_at, COALESCE(started_at, finished_at) AS left_at FROM generations"
            " WHERE created_at < ? AND (status = 'pending'"
            " OR COALESCE(started_at, finished_at) >= ?)",
            (now, start),
        )
        depth = [
            sum(1 for s in spans if s["created_at"] <= end and (s["left_at"] or now + 1) > end)
            for end in ends
        ]
        speeds = self.fetch_all(
            "SELECT COALESCE(g.device, g.provider, 'unknown') AS device,"
            " COALESCE(i.model, 'default') AS model, COUNT(*) AS images,"
            " SUM(i.generation_time_ms) AS ms FROM images i"
            " JOIN generations g ON g.id = i.generation_id WHERE i.created_at >= ?"
            " GROUP BY COALESCE(g.device, g.provider, 'unknown'), COALESCE(i.model, 'default')"
            " ORDER BY 1, 2",
            (start,),
        )
        return {
            "minutes": [round(end - MINUTE) for end in ends],
            "images": images,
            "queue_depth": depth,
            "render_seconds": [
                {"device": r["device"], "model": r["model"], "images": int(r["images"]),
                 "seconds_per_image": round(float(r["ms"]) / 1000 / int(r["images"]), 3)}
                for r in speeds
            ],  # fmt: skip
        }
