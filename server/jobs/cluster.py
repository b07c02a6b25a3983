"""The queue of several nodes on one PostgreSQL database: the JobQueue the workers know,
with the pending jobs in the database instead of this process's memory.

`take` claims the next jobs in the shared fair order (server/store/cluster.py: FOR UPDATE
SKIP LOCKED, no global write lock) and leases them to this node. Workers sleep until a
NOTIFY says there is work (a submit, a job handed back or returned from a dead node),
with a slow poll as a safety net. A keeper thread renews this node's leases and its
heartbeat, stops a running job that was cancelled on another node (or whose lease was
lost), and returns jobs whose lease expired (their node died) to the queue. Cancels also
arrive by NOTIFY, so the rendering node stops at its next step.

Remote providers' jobs are not claimed by workers: the node that admits one watches it
(`RemoteWatch`, the providers' runner) under the same lease, renewed by the same keeper;
when that node dies or stops, any node with the provider configured takes the job over
and resumes watching it by its stored handle.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Container, Hashable
from typing import Any, Protocol

import psycopg

from server.jobs.queue import JobQueue
from server.progress import Progress
from server.store.cluster import CHANNEL, ClusterStore

log = logging.getLogger("darkroom.cluster")

POLL_SECONDS = 2.0  # the safety net under NOTIFY
SNAPSHOT_SECONDS = 0.5  # how stale queue positions and estimates may be
Describe = Callable[[dict[str, Any]], tuple[Hashable, str | None]]


class RemoteWatch(Protocol):
    """The remote jobs this node watches (server/providers/router.py's Providers)."""

    def watching(self) -> list[int]: ...

    def stop(self, generation_id: int, reason: str) -> None: ...

    def adopt(self) -> int:
        """Watch the remote jobs no node watches; how many were taken."""
        ...


class ClusterQueue(JobQueue):
    def __init__(
        self,
        cluster: ClusterStore,
        describe: Describe,
        max_attempts: int,
        gave_up: dict[str, Any],
        devices: Callable[[], list[str]] = list,
    ) -> None:
        """`describe(row)`: a stored job's batching key and model (specs.py)."""
        super().__init__()
        self.cluster = cluster
        self.node_id = cluster.node_id
        self.describe = describe
        self.max_attempts = max_attempts
        self.gave_up = gave_up
        self.devices = devices
        self.started_at = time.time()
        self._signal = 0  # moves on every NOTIFY and local put: workers wake on it
        self._announced = True  # the running batch's start was told to the other nodes
        self._snapshot: tuple[float, list[dict[str, Any]], list[dict[str, Any]]] | None = None
        self._stop_threads = threading.Event()
        self._listen_conn: psycopg.Connection[Any] | None = None
        self.remote: RemoteWatch | None = None  # set by state.py when providers exist
        self._threads = [
            threading.Thread(target=self._listen, name="darkroom-listen", daemon=True),
            threading.Thread(target=self._keep, name="darkroom-leases", daemon=True),
        ]

    def start(self) -> None:
        self._heartbeat()
        self._adopt()
        for thread in self._threads:
            thread.start()

    def shutdown(self) -> None:
        """After the workers stopped: hand back what this node claimed, leave the cluster."""
        self._stop_threads.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(5)
        try:
            handed = self.cluster.unclaim()
            self.cluster.leave()
            self.cluster.notify("job")
            if handed:
                log.info("handed %d claimed job(s) back to the queue", handed)
        except psycopg.Error:
            log.exception("could not hand claimed jobs back (their leases will expire)")

    # -- the workers' side ------------------------------------------------------------------

    def put(
        self,
        generation_id: int,
        units: float,
        user_id: int = 0,
        key: Hashable = None,
        model: str | None = None,
    ) -> None:
        """The job is already a row: wake this node's workers and tell the others. The
        snapshot is read again, so the answer to this submit shows the job's place."""
        self._snapshot = None
        self._wake()
        try:
            self.cluster.notify("job")
        except psycopg.Error:
            log.warning("could not NOTIFY the other nodes (they poll)", exc_info=True)

    def take(
        self,
        timeout: float | None = None,
        max_batch: int = 1,
        loaded: Container[str | None] | None = None,
        switch_wait: float = 0.0,
    ) -> list[Progress]:
        """Claim the next batch in the shared fair order (see JobQueue.take). The model
        preference (`loaded`, `switch_wait`) is not applied across nodes: strict order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                if self._closed:
                    return []
                seen, paused = self._signal, self._paused
            if not paused:
                try:
                    rows = self._claim(max_batch)
                except psycopg.Error:
                    log.warning("could not claim jobs; retrying", exc_info=True)
                    rows = []
                if rows:
                    return self._start(rows)
            with self._cond:
                wait = POLL_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return []
                self._cond.wait_for(lambda seen=seen: self._signal != seen or self._closed, wait)

    def _claim(self, max_batch: int) -> list[dict[str, Any]]:
        with self.cluster.engine.unlocked() as db:
            head = self.cluster.claim_head(db)
            if head is None:
                return []
            batch = [head]
            key = self.describe(head)[0] if max_batch > 1 else None
            if key is not None:
                for row in self.cluster.claim_followers(db, head["id"], max_batch - 1):
                    if self.describe(row)[0] != key:
                        break
                    batch.append(row)
            self.cluster.take_claims(db, batch)
            return batch

    def _start(self, rows: list[dict[str, Any]]) -> list[Progress]:
        with self._cond:
            if self._closed:
                self.cluster.unclaim([row["id"] for row in rows])
                return []
            started = time.monotonic()
            taken = [
                Progress(
                    row["id"],
                    row["work_units"],
                    row["user_id"],
                    started=started,
                    preview_wanted=row["id"] in self._previews,
                )
                for row in rows
            ]
            # Several workers (one per device) may each be running a batch.
            self.running = [*self.running, *taken]
            self._previews -= {row["id"] for row in rows}
            self._announced = False
            self.version += 1
            return taken

    def touch(self) -> None:
        super().touch()
        if not self._announced:  # the batch's first step: it is processing now
            self._announced = True
            self._tell("status")

    def done(self, jobs: list[Progress] | None = None) -> None:
        super().done(jobs)
        self._tell("job")  # a job handed back (shutdown, crash) can go elsewhere

    def cancel(self, generation_id: int) -> str:
        """Stop it here if it runs here; tell the other nodes (the caller fails the row)."""
        with self._cond:
            self.version += 1
            job = self.progress_of(generation_id)
            if job is not None:
                job.request_stop("cancelled")
        self._tell(f"cancel:{generation_id}")
        return "stopping" if job is not None else "inactive"

    def want_previews(self, generation_id: int) -> None:
        with self._cond:
            job = self.progress_of(generation_id)
            if job is not None:
                job.preview_wanted = True
            else:
                self._previews.add(generation_id)

    def _wake(self) -> None:
        with self._cond:
            self._signal += 1
            self.version += 1
            self._cond.notify_all()

    def _tell(self, payload: str) -> None:
        try:
            self.cluster.notify(payload)
        except psycopg.Error:
            log.warning("could not NOTIFY %s", payload, exc_info=True)

    # -- NOTIFY, leases, heartbeats -----------------------------------------------------------

    def _listen(self) -> None:
        while not self._stop_threads.is_set():
            try:
                with psycopg.connect(self.cluster.engine.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake()  # anything missed while not listening
                    while not self._stop_threads.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._heard(note.payload)
            except psycopg.Error:
                log.warning("LISTEN connection lost; reconnecting", exc_info=True)
                self._stop_threads.wait(1.0)

    def _heard(self, payload: str) -> None:
        if payload.startswith("cancel:"):
            generation_id = int(payload.partition(":")[2])
            job = self.progress_of(generation_id)
            if job is not None:
                job.request_stop("cancelled")
            elif self.remote is not None:
                self.remote.stop(generation_id, "cancelled")
        self._wake()

    def _keep(self) -> None:
        every = max(0.2, self.cluster.lease / 3)
        while not self._stop_threads.wait(every):
            try:
                self._heartbeat()
                watched = self.remote.watching() if self.remote is not None else []
                for generation_id, reason in self.cluster.renew(
                    [*(job.generation_id for job in self.running), *watched]
                ).items():
                    log.warning("job %d: stopping here (%s)", generation_id, reason)
                    job = self.progress_of(generation_id)
                    if job is not None:
                        job.request_stop(reason)
                    elif self.remote is not None:
                        self.remote.stop(generation_id, reason)
                if self.cluster.has_expired():
                    returned = self.cluster.reclaim(self.max_attempts, self.gave_up)
                    if returned:
                        log.warning("%d job(s) of a node that stopped answering requeued",
                                    returned)
                        self.cluster.notify("job")
                self._adopt()
            except psycopg.Error:
                log.warning("could not renew leases", exc_info=True)

    def _adopt(self) -> None:
        if self.remote is not None:
            taken = self.remote.adopt()
            if taken:
                log.info("watching %d remote job(s) no node watched", taken)

    def _heartbeat(self) -> None:
        self.cluster.heartbeat(socket.gethostname(), self.devices(), self.started_at)

    def nodes(self) -> list[dict[str, Any]]:
        return self.cluster.nodes()

    # -- what polls, estimates and metrics read ---------------------------------------------

    def _read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        now = time.monotonic()
        snap = self._snapshot
        if snap is None or now - snap[0] > SNAPSHOT_SECONDS:
            snap = (now, self.cluster.pending_in_order(), self.cluster.processing_units())
            self._snapshot = snap
        return snap[1], snap[2]

    def _running_units(self, processing: list[dict[str, Any]]) -> float:
        """Work left in the jobs rendering anywhere (this node knows its own progress)."""
        mine = {job.generation_id: job for job in self.running}
        left = 0.0
        for row in processing:
            job = mine.get(row["id"])
            done = job.step / job.total_steps if job and job.total_steps else 0.0
            left += row["work_units"] * (1.0 - done)
        return left

    def depth(self) -> int:
        pending, _ = self._read()
        return len(pending) + len(self.running)

    def position(self, generation_id: int) -> tuple[int, float] | None:
        pending, processing = self._read()
        ahead = self._running_units(processing)
        for place, row in enumerate(pending, start=1):
            if row["id"] == generation_id:
                return place, ahead
            ahead += row["work_units"]
        return None

    def work_ahead_of_new_job(self) -> float:
        pending, processing = self._read()
        return self._running_units(processing) + sum(row["work_units"] for row in pending)

    def units_until_first_done(self, user_id: int | None) -> float:
        pending, processing = self._read()
        ahead = self._running_units(processing)
        if any(user_id in (None, row["user_id"]) for row in processing):
            return ahead
        for row in pending:
            ahead += row["work_units"]
            if user_id == row["user_id"]:
                break
        return ahead
