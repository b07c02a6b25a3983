"""What finished generations say of the render speed (the queue's time estimates) and of
the jobs done (the metrics' counters)."""

from __future__ import annotations

from typing import Any

from server.store.database import Database

# Rendered by this server's own pool (remote providers' times say nothing of its speed).
LOCAL = "(provider IS NULL OR provider = 'darkroom')"


class SpeedQueries(Database):
    def seconds_per_work_unit(self, recent: int = 20) -> float | None:
        """Measured render speed over the most recent completed jobs."""
        row = self.fetch_one(
            "SELECT SUM(render_seconds) AS seconds, SUM(work_units) AS units FROM ("
            " SELECT render_seconds, work_units FROM generations WHERE status = 'completed'"
            f" AND render_seconds IS NOT NULL AND {LOCAL} ORDER BY id DESC LIMIT ?) AS recent",
            (recent,),
        )
        if not row or not row["units"]:
            return None
        return float(row["seconds"]) / float(row["units"])

    def seconds_per_work_unit_by_size(self, recent: int = 200) -> dict[int, float]:
        """Measured render speed per image size (width x height) over recent jobs."""
        rows = self.fetch_all(
            "SELECT pixels, SUM(render_seconds) AS seconds, SUM(work_units) AS units FROM ("
            f" SELECT {self.json_number('request_json', '$.settings.width')}"
            f" * {self.json_number('request_json', '$.settings.height')} AS pixels,"
            " render_seconds, work_units FROM generations WHERE status = 'completed'"
            f" AND render_seconds IS NOT NULL AND {LOCAL} ORDER BY id DESC LIMIT ?) AS recent"
            " GROUP BY pixels",
            (recent,),
        )
        return {
            int(row["pixels"]): float(row["seconds"]) / float(row["units"])
            for row in rows
            if row["units"] and row["pixels"]
        }

    def finished_counts(self) -> list[dict[str, Any]]:
        """Finished generations by status and error code (the metrics' job counter)."""
        return self.fetch_all(
            f"SELECT status, COALESCE({self.json_text('error_json', '$.code')}, '') AS code,"
            " COUNT(*) AS n FROM generations WHERE status IN ('completed', 'failed')"
            " GROUP BY status, code"
        )

    def image_count(self) -> int:
        row = self.fetch_one("SELECT COUNT(*) AS n FROM images")
        return int(row["n"]) if row else 0
