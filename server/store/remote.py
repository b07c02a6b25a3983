"""Remote providers' bookkeeping on the generation row: the remote job's handle, its
tries, and the per-provider counts /metrics reports (server/providers/)."""

from __future__ import annotations

import json
import time
from typing import Any

from server.store.database import Database


class RemoteQueries(Database):
    def remote_attempt(self, generation_id: int, handle: dict[str, Any], max_attempts: int) -> bool:
        """About to submit to a remote: count the try and record that a submit is under
        way; False (nothing changed) if the job is finished, out of tries, or (several
        nodes) watched by another node now."""
        owned, args = self._owned()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE generations SET attempts = attempts + 1, remote_json = ?"
                f" WHERE id = ? AND status IN ('pending', 'processing') AND attempts < ?{owned}",
                (json.dumps(handle), generation_id, max_attempts, *args),
            )
            return cursor.rowcount == 1

    def save_remote(self, generation_id: int, handle: dict[str, Any]) -> None:
        """The remote accepted the job: its request id and URLs, kept for a restart."""
        owned, args = self._owned()
        with self.transaction() as db:
            db.execute(
                f"UPDATE generations SET remote_json = ? WHERE id = ?{owned}",
                (json.dumps(handle), generation_id, *args),
            )

    def mark_remote_processing(self, generation_id: int) -> bool:
        """The remote started rendering (or had already): pending becomes processing. True
        if the job is processing now."""
        with self.transaction() as db:
            db.execute(
                "UPDATE generations SET status = 'processing',"
                " started_at = COALESCE(started_at, ?) WHERE id = ? AND status = 'pending'",
                (time.time(), generation_id),
            )
            row = db.execute("SELECT status FROM generations WHERE id = ?", (generation_id,))
            found = row.fetchone()
            return found is not None and found[0] == "processing"

    def provider_counts(self) -> list[dict[str, Any]]:
        """Finished generations by provider, status and error code, with the seconds from
        submit to the end summed (the per-provider job counter and latency)."""
        return self.fetch_all(
            "SELECT COALESCE(provider, 'darkroom') AS provider, status,"
            f" COALESCE({self.json_text('error_json', '$.code')}, '') AS code,"
            " COUNT(*) AS n, SUM(finished_at - created_at) AS seconds"
            " FROM generations WHERE status IN ('completed', 'failed')"
            " GROUP BY COALESCE(provider, 'darkroom'), status,"
            f" COALESCE({self.json_text('error_json', '$.code')}, '')"
        )
