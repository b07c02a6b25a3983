"""The SQL of several nodes sharing one PostgreSQL database (issue 18): claims, leases,
the shared fair order, node heartbeats. PostgreSQL only (SQLite has one node).

A claim is `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction that does not take the
engine's advisory write lock: claims touch only the rows they lock, never credits, so
nodes claiming at once neither wait for each other nor for admissions. A claimed job
keeps status 'pending' with `node_id` and `lease_until` set until the worker marks it
processing; the claiming node renews the lease while it holds the job. Times are the
database's clock, so the nodes' clocks need not agree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from server.store import Store
from server.store.database import Connection

NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
CHANNEL = "darkroom"

# Pending, unclaimed jobs of the nodes' own pools (a remote provider's job is its runner's)
# in the fair order: each user's first job, the user served longest ago (or never) first;
# then each user's second job, and so on (FIFO within a user).
UNCLAIMED = (
    "status = 'pending' AND node_id IS NULL AND (provider IS NULL OR provider = 'darkroom')"
)
# A remote provider's job: its node only watches it, so any node with that provider can.
REMOTE = "provider IS NOT NULL AND provider <> 'darkroom'"
FAIR = (
    "SELECT g.id, g.user_id, g.work_units, g.request_json FROM generations g"
    " JOIN (SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY id) AS lane"
    f"  FROM generations WHERE {UNCLAIMED}) AS o ON o.id = g.id"
    " LEFT JOIN queue_users u ON u.user_id = g.user_id"
    # Checked again on the locked row (FOR UPDATE re-reads it): another node's claim that
    # committed meanwhile makes it fail.
    " WHERE g.status = 'pending' AND g.node_id IS NULL{extra}"
    " ORDER BY o.lane, COALESCE(u.last_served, 0), g.id"
)


class ClusterStore:
    def __init__(self, store: Store, node_id: str, lease_seconds: float) -> None:
        self.store = store
        self.engine: Any = store.engine  # the PostgresEngine
        self.node_id = node_id
        self.lease = lease_seconds

    # -- claims and leases -------------------------------------------------------------

    def claim_head(self, db: Connection) -> dict[str, Any] | None:
        """Lock the next job in the fair order that no other claim holds."""
        row = db.execute(FAIR.format(extra="") + " LIMIT 1 FOR UPDATE OF g SKIP LOCKED")
        found = row.fetchone()
        return dict(found) if found else None

    def claim_followers(self, db: Connection, head: int, limit: int) -> list[dict[str, Any]]:
        """Lock up to `limit` jobs that come next in the fair order (batch candidates)."""
        sql = FAIR.format(extra=" AND g.id <> ?") + " LIMIT ? FOR UPDATE OF g SKIP LOCKED"
        return [dict(row) for row in db.execute(sql, (head, limit)).fetchall()]

    def take_claims(self, db: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Lease the locked rows to this node; their users were just served."""
        for row in rows:
            db.execute(
                f"UPDATE generations SET node_id = ?, lease_until = {NOW} + ? WHERE id = ?",
                (self.node_id, self.lease, row["id"]),
            )
        for user_id in dict.fromkeys(row["user_id"] for row in rows):
            db.execute(
                f"INSERT INTO queue_users (user_id, last_served) VALUES (?, {NOW})"
                " ON CONFLICT (user_id) DO UPDATE SET last_served = excluded.last_served",
                (user_id,),
            )

    def unclaim(self, ids: Sequence[int] | None = None) -> int:
        """Hand back claimed jobs not started yet (all of this node's when `ids` is None,
        with the remote jobs it watched: another node resumes watching them at once)."""
        with self.engine.unlocked() as db:
            sql = (
                "UPDATE generations SET node_id = NULL, lease_until = NULL"
                " WHERE node_id = ? AND status = 'pending'"
            )
            if ids is None:
                watched = f" OR (node_id = ? AND status = 'processing' AND {REMOTE})"
                return int(db.execute(sql + watched, (self.node_id, self.node_id)).rowcount)
            return sum(
                int(db.execute(sql + " AND id = ?", (self.node_id, i)).rowcount) for i in ids
            )

    def renew(self, ids: Sequence[int]) -> dict[int, str]:
        """Extend this node's leases; returns, for each of `ids` (the jobs it renders), why
        it must stop: 'cancelled' (failed meanwhile, e.g. by a cancel on another node) or
        'lost' (its lease expired and the job went to another node)."""
        with self.engine.unlocked() as db:
            db.execute(
                f"UPDATE generations SET lease_until = {NOW} + ?"
                " WHERE node_id = ? AND status IN ('pending', 'processing')",
                (self.lease, self.node_id),
            )
            stop: dict[int, str] = {}
            for generation_id in ids:
                row = db.execute(
                    "SELECT status, node_id FROM generations WHERE id = ?", (generation_id,)
                ).fetchone()
                if row is None or row[0] not in ("pending", "processing"):
                    stop[generation_id] = "cancelled"
                elif row[1] != self.node_id:
                    stop[generation_id] = "lost"
            return stop

    def has_expired(self) -> bool:
        with self.engine.reading() as db:
            row = db.execute(
                "SELECT 1 FROM generations WHERE node_id IS NOT NULL"
                f" AND status IN ('pending', 'processing') AND lease_until < {NOW} LIMIT 1"
            ).fetchone()
        return row is not None

    def reclaim(
        self,
        max_attempts: int,
        gave_up: dict[str, Any],
        own: bool = False,
        caller_gone: dict[str, Any] | None = None,
    ) -> int:
        """Return jobs whose lease expired (and, with `own`, this node's: it starts anew) to
        the queue. A job that had started counts that try (mark_processing counted it);
        one tried `max_attempts` times fails with `gave_up`. With `caller_gone`, the
        blocking calls whose callers waited on this node end with it (the restart closed
        their connections). Takes the write lock: failing releases credits. Returns how
        many jobs changed."""
        mine = " OR node_id = ?" if own else ""
        with self.store.transaction() as db:
            cancelled = 0
            if caller_gone is not None:
                cancelled = self.store.cancel_callerless(db, self.node_id, caller_gone)
            rows = db.execute(
                f"SELECT id, status, attempts, {REMOTE} AS remote FROM generations"
                " WHERE node_id IS NOT NULL AND status IN ('pending', 'processing')"
                f" AND (lease_until < {NOW}{mine})",
                (self.node_id,) if own else (),
            ).fetchall()
            for generation_id, status, attempts, remote in rows:
                if remote:  # unwatched: the next watcher resumes it by its stored handle
                    db.execute(
                        "UPDATE generations SET node_id = NULL, lease_until = NULL WHERE id = ?",
                        (generation_id,),
                    )
                    continue
                if status == "processing" and attempts >= max_attempts:
                    self.store._finish_failed(db, generation_id, gave_up)
                    continue
                db.execute(
                    "UPDATE generations SET status = 'pending', node_id = NULL,"
                    " lease_until = NULL WHERE id = ?",
                    (generation_id,),
                )
        return cancelled + len(rows)

    def watch_remote(
        self, providers: Sequence[str], ids: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Lease to this node the active remote jobs of `providers` that no node watches
        (just admitted here, handed back, or their node died), all or only `ids`."""
        if not providers or (ids is not None and not ids):
            return []
        names = ",".join("?" * len(providers))
        only = f" AND id IN ({','.join('?' * len(ids))})" if ids is not None else ""
        with self.engine.unlocked() as db:
            rows = db.execute(
                f"UPDATE generations SET node_id = ?, lease_until = {NOW} + ? WHERE id IN ("
                " SELECT id FROM generations WHERE status IN ('pending', 'processing')"
                f" AND node_id IS NULL AND provider IN ({names}){only}"
                " ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id, provider, work_units",
                (self.node_id, self.lease, *providers, *(ids or ())),
            ).fetchall()
        return [dict(row) for row in rows]

    def notify(self, payload: str) -> None:
        with self.engine.reading() as db:
            db.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    # -- what polls and estimates read ----------------------------------------------------

    def pending_in_order(self) -> list[dict[str, Any]]:
        """Every pending job (claimed ones first: they start next) in the fair order."""
        with self.engine.reading() as db:
            claimed = db.execute(
                "SELECT id, user_id, work_units FROM generations WHERE status = 'pending'"
                " AND node_id IS NOT NULL ORDER BY id"
            ).fetchall()
            waiting = db.execute(FAIR.format(extra="")).fetchall()
        return [dict(row) for row in (*claimed, *waiting)]

    def processing_units(self) -> list[dict[str, Any]]:
        return self.store.fetch_all(
            "SELECT id, user_id, work_units FROM generations WHERE status = 'processing'"
        )

    # -- nodes ----------------------------------------------------------------------------

    def heartbeat(self, host: str, devices: Sequence[str], started_at: float) -> None:
        with self.engine.unlocked() as db:
            db.execute(
                "INSERT INTO nodes (id, host, started_at, last_heartbeat, devices)"
                f" VALUES (?, ?, ?, {NOW}, ?) ON CONFLICT (id) DO UPDATE SET"
                " host = excluded.host, started_at = excluded.started_at,"
                " last_heartbeat = excluded.last_heartbeat, devices = excluded.devices",
                (self.node_id, host, started_at, json.dumps(list(devices))),
            )

    def leave(self) -> None:
        with self.engine.unlocked() as db:
            db.execute("DELETE FROM nodes WHERE id = ?", (self.node_id,))

    def nodes(self) -> list[dict[str, Any]]:
        rows = self.store.fetch_all(
            f"SELECT id, host, started_at, last_heartbeat, devices, {NOW} AS now"
            " FROM nodes ORDER BY id"
        )
        for row in rows:
            row["devices"] = json.loads(row["devices"] or "[]")
            row["seconds_since_heartbeat"] = round(row.pop("now") - row["last_heartbeat"], 3)
        return rows

    def clock(self) -> float:
        row = self.store.fetch_one(f"SELECT {NOW} AS now")
        return float(row["now"]) if row else time.time()
