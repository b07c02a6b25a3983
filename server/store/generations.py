"""Generations and their images: the job rows the queue and the API work from."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import server.store.ledger as ledger
import server.store.webhooks as webhooks
from server.store.database import Connection, Database, insert_id
from server.store.inputs import input_names, record_inputs, release_inputs

ACTIVE = ("pending", "processing")


@dataclass(frozen=True)
class NewImage:
    idx: int
    token: str
    seed: int
    width: int
    height: int
    format: str
    file_name: str
    thumb_name: str
    in_vault: bool
    generation_time_ms: int
    model: str | None = None
    model_hash: str | None = None


def lora_ids(request: dict[str, Any]) -> str | None:
    """A request's LoRA ids as ",3,7,": what the gallery's LoRA filter matches."""
    ids = [str(lora["id"]) for lora in request.get("loras") or []]
    return f",{','.join(ids)}," if ids else None


@dataclass(frozen=True)
class HistoryFilters:
    """The gallery's filters: prompt text, model name, LoRA id, status, date range."""

    text: str | None = None
    model: str | None = None
    lora_id: int | None = None
    status: str | None = None
    date_to: float | None = None

    def add_to(self, where: list[str], args: list[Any]) -> None:
        if self.text:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("LOWER(prompt) LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped.lower()}%")
        if self.model:
            where.append(
                "EXISTS (SELECT 1 FROM images i WHERE i.generation_id = generations.id"
                " AND i.model = ?)"
            )
            args.append(self.model)
        if self.lora_id is not None:
            where.append("lora_ids LIKE ?")
            args.append(f"%,{self.lora_id},%")
        if self.status:
            where.append("status = ?")
            args.append(self.status)
        if self.date_to is not None:
            where.append("created_at < ?")
            args.append(self.date_to)


class GenerationQueries(Database):
    def insert_generation(
        self,
        request_id: str,
        prompt: str,
        request: dict[str, Any],
        seed: int,
        seed_fixed: bool,
        work_units: float,
        user_id: int,
        cost: float,
        admit: Callable[[Connection], None] | None = None,
        provider: str | None = None,
        caller_node: str | None = None,
    ) -> int:
        """Record a pending generation and hold its cost, in one transaction; `admit` runs
        first inside it and may raise to refuse the request (nothing is then written).
        `caller_node`: the node whose open connection waits for a blocking call."""
        with self.transaction() as db:
            if admit is not None:
                admit(db)
            generation_id = insert_id(
                db,
                "INSERT INTO generations (request_id, status, prompt, request_json, seed,"
                " seed_fixed, work_units, user_id, cost, created_at, provider, lora_ids,"
                " caller_node)"
                " VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    prompt,
                    json.dumps(request),
                    seed,
                    int(seed_fixed),
                    work_units,
                    user_id,
                    cost,
                    time.time(),
                    provider,
                    lora_ids(request),
                    caller_node,
                ),
            )
            record_inputs(db, generation_id, input_names(request))
            ledger.hold(db, user_id, generation_id, cost)
            return generation_id

    def generation(self, request_id: str, user_id: int | None = None) -> dict[str, Any] | None:
        """The generation with this request id; with `user_id`, only if it is theirs."""
        live = "request_id = ? AND deleted_at IS NULL"
        if user_id is None:
            return self.fetch_one(f"SELECT * FROM generations WHERE {live}", (request_id,))
        return self.fetch_one(
            f"SELECT * FROM generations WHERE {live} AND user_id = ?", (request_id, user_id)
        )

    def generation_by_id(self, generation_id: int) -> dict[str, Any] | None:
        return self.fetch_one("SELECT * FROM generations WHERE id = ?", (generation_id,))

    def images_of(self, generation_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {gid: [] for gid in generation_ids}
        if not generation_ids:
            return found
        marks = ",".join("?" * len(generation_ids))
        for row in self.fetch_all(
            f"SELECT * FROM images WHERE generation_id IN ({marks}) ORDER BY generation_id, idx",
            list(generation_ids),
        ):
            found[row["generation_id"]].append(row)
        return found

    def image_by_token(self, token: str) -> dict[str, Any] | None:
        return self.fetch_one("SELECT * FROM images WHERE token = ? AND purged = 0", (token,))

    def recover(
        self, max_attempts: int, gave_up: dict[str, Any], caller_gone: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """At start-up: a job that was processing when the server died runs again, unless it
        has already been tried `max_attempts` times (then it fails with the error `gave_up`).
        A blocking call's job ends with `caller_gone`, uncharged: its caller's connection
        died with the server. Returns the pending jobs, oldest first."""
        with self.transaction() as db:
            self.cancel_callerless(db, None, caller_gone)
            given_up = db.execute(
                "SELECT id FROM generations WHERE status = 'processing' AND attempts >= ?",
                (max_attempts,),
            ).fetchall()
            for (generation_id,) in given_up:
                self._finish_failed(db, generation_id, gave_up)
            db.execute("UPDATE generations SET status = 'pending' WHERE status = 'processing'")
        return self.fetch_all("SELECT * FROM generations WHERE status = 'pending' ORDER BY id")

    def cancel_callerless(self, db: Connection, node: str | None, error: dict[str, Any]) -> int:
        """End the unfinished blocking calls whose caller waited on `node` (None: on any
        node) with `error`, releasing their holds; their rows stay in history."""
        query = "SELECT id FROM generations WHERE status IN ('pending', 'processing') AND "
        if node is None:
            rows = db.execute(query + "caller_node IS NOT NULL").fetchall()
        else:
            rows = db.execute(query + "caller_node = ?", (node,)).fetchall()
        return sum(self._finish_failed(db, generation_id, error) for (generation_id,) in rows)

    def mark_processing(self, generation_id: int) -> bool:
        """Start a pending job; False if it was finished meanwhile (cancelled)."""
        owned, args = self._owned()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE generations SET status = 'processing', started_at = ?,"
                f" attempts = attempts + 1 WHERE id = ? AND status = 'pending'{owned}",
                (time.time(), generation_id, *args),
            )
            return cursor.rowcount == 1

    def requeue(self, generation_id: int) -> None:
        """The worker died under this job: run it again (the try is counted)."""
        owned, args = self._owned()
        with self.transaction() as db:
            db.execute(
                "UPDATE generations SET status = 'pending', node_id = NULL, lease_until = NULL"
                f" WHERE id = ? AND status = 'processing'{owned}",
                (generation_id, *args),
            )

    def release(self, generation_id: int) -> None:
        """A job stopped by a graceful shutdown goes back to the queue; that try is not counted."""
        owned, args = self._owned()
        with self.transaction() as db:
            db.execute(
                "UPDATE generations SET status = 'pending', node_id = NULL, lease_until = NULL,"
                " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                f" WHERE id = ? AND status = 'processing'{owned}",
                (generation_id, *args),
            )

    def complete(
        self,
        generation_id: int,
        images: Sequence[NewImage],
        credits_used: float,
        render_seconds: float,
        lora_weights: Sequence[tuple[int, float]],
        device: str | None = None,
    ) -> bool:
        """Record the images and charge, unless the job was finished meanwhile (cancelled,
        timed out): then nothing is written and False says the files are not wanted."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT status, node_id FROM generations WHERE id = ?", (generation_id,)
            ).fetchone()
            if row[0] != "processing" or (self.node_id is not None and row[1] != self.node_id):
                return False
            db.executemany(
                "INSERT INTO images (generation_id, idx, token, seed, width, height, format,"
                " file_name, thumb_name, in_vault, generation_time_ms, created_at, model,"
                " model_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        generation_id,
                        i.idx,
                        i.token,
                        i.seed,
                        i.width,
                        i.height,
                        i.format,
                        i.file_name,
                        i.thumb_name,
                        int(i.in_vault),
                        i.generation_time_ms,
                        now,
                        i.model,
                        i.model_hash,
                    )
                    for i in images
                ],
            )
            db.executemany(
                "UPDATE loras SET usage_count = usage_count + 1, weight_sum = weight_sum + ?"
                " WHERE id = ?",
                [(weight, lora_id) for lora_id, weight in lora_weights],
            )
            db.execute(
                "UPDATE generations SET status = 'completed', credits_used = ?, finished_at = ?,"
                " render_seconds = ?, device = ? WHERE id = ?",
                (credits_used, now, render_seconds, device, generation_id),
            )
            ledger.settle(db, generation_id, credits_used)
            webhooks.arm(db, generation_id)
        return True

    def fail(self, generation_id: int, error: dict[str, Any]) -> bool:
        """Fail an active job and release its hold; False (and no change) if it had
        already finished."""
        with self.transaction() as db:
            return self._finish_failed(db, generation_id, error)

    @staticmethod
    def _finish_failed(db: Connection, generation_id: int, error: dict[str, Any]) -> bool:
        cursor = db.execute(
            "UPDATE generations SET status = 'failed', error_json = ?, finished_at = ?"
            " WHERE id = ? AND status IN ('pending', 'processing')",
            (json.dumps(error), time.time(), generation_id),
        )
        if cursor.rowcount != 1:
            return False
        ledger.settle(db, generation_id, None)
        webhooks.arm(db, generation_id)
        return True

    def history(
        self,
        user_id: int,
        page: int,
        per_page: int,
        date_from: float | None,
        has_seed: bool | None,
        filters: HistoryFilters | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        where: list[str] = ["user_id = ?", "deleted_at IS NULL"]
        args: list[Any] = [user_id]
        if date_from is not None:
            where.append("created_at >= ?")
            args.append(date_from)
        if has_seed is not None:
            where.append("seed_fixed = ?")
            args.append(int(has_seed))
        if filters is not None:
            filters.add_to(where, args)
        clause = f"WHERE {' AND '.join(where)}"
        total = self.fetch_one(f"SELECT COUNT(*) AS n FROM generations {clause}", args)
        rows = self.fetch_all(
            f"SELECT * FROM generations {clause} ORDER BY created_at DESC, id DESC"
            " LIMIT ? OFFSET ?",
            [*args, per_page, (page - 1) * per_page],
        )
        return rows, int(total["n"] if total else 0)

    def delete_generation(self, generation_id: int) -> tuple[list[str], list[str]] | None:
        """Delete an ended generation: its images' rows, prompt and request; the vault files
        to remove (its images', and its inputs' that no other generation names), or None if
        it is still active. What stays is a tombstone that no route shows, since the
        append-only ledger's rows (its charge) point at it."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT status FROM generations WHERE id = ? AND deleted_at IS NULL",
                (generation_id,),
            ).fetchone()
            if row is None or row[0] in ACTIVE:
                return None
            files = [
                name
                for image in db.execute(
                    "SELECT file_name, thumb_name FROM images WHERE generation_id = ?",
                    (generation_id,),
                ).fetchall()
                for name in (image[0], image[1])
            ]
            db.execute("DELETE FROM images WHERE generation_id = ?", (generation_id,))
            db.execute(
                "UPDATE generations SET deleted_at = ?, prompt = '', request_json = '{}',"
                " error_json = NULL, lora_ids = NULL WHERE id = ?",
                (time.time(), generation_id),
            )
            return files, release_inputs(db, generation_id)

    def expired_temporary_images(self, older_than: float) -> list[dict[str, Any]]:
        return self.fetch_all(
            "SELECT * FROM images WHERE in_vault = 0 AND purged = 0 AND created_at < ?",
            (older_than,),
        )

    def mark_purged(self, image_ids: Sequence[int]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE images SET purged = 1 WHERE id = ?", [(i,) for i in image_ids])

    def referenced_files(self) -> set[str]:
        """Every vault file a record names: images, thumbnails, inputs."""
        rows = self.fetch_all("SELECT file_name, thumb_name FROM images WHERE purged = 0")
        images = {name for row in rows for name in (row["file_name"], row["thumb_name"])}
        inputs = self.fetch_all("SELECT DISTINCT name FROM generation_inputs")
        return images | {row["name"] for row in inputs}

    @staticmethod
    def active_count(db: Connection, user_id: int) -> int:
        sql = "SELECT COUNT(*) FROM generations WHERE user_id = ? AND status IN (?, ?)"
        return int(db.execute(sql, (user_id, *ACTIVE)).fetchone()[0])

    @staticmethod
    def pending_count(db: Connection) -> int:
        sql = "SELECT COUNT(*) FROM generations WHERE status = 'pending'"
        return int(db.execute(sql).fetchone()[0])
