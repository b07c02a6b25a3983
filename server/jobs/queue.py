"""The fair queue: the in-memory order the workers take jobs in, and what they are doing.

The database is the source of truth (a job is a row before anyone hears of it); this
module only orders the pending jobs and tracks the running ones.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Container, Hashable
from dataclasses import dataclass

from server.progress import Progress


@dataclass(frozen=True)
class Entry:
    generation_id: int
    units: float
    user_id: int
    key: Hashable = None  # jobs with the same key may render as one batch; None: never
    model: str | None = None  # the model it needs (None: the default model)


class JobQueue:
    """Pending generations, shared by the event loop (put) and the worker threads (take;
    one per device, each running its own batch).

    Fair: jobs are taken round-robin across users, FIFO within a user, so one user's
    queue cannot starve another's. A batch is the run of consecutive jobs in that order
    that share a key, so batching never changes the order in which jobs start.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # user -> their pending jobs. The user served longest ago (or never) goes next.
        self._lanes: dict[int, deque[Entry]] = {}
        self._order: list[Entry] | None = None
        self._taken = 0
        self._last_served: dict[int, int] = {}  # user -> when last served (count of takes)
        self._closed = False
        self._paused = False
        self.running: list[Progress] = []
        # Bumped on every change anyone may be watching for (event streams look at it).
        self.version = 0
        self._previews: set[int] = set()  # generations whose event streams want previews
        # job -> when a job for a loaded model first started before it (see take)
        self._passed_over: dict[int, float] = {}

    def put(
        self,
        generation_id: int,
        units: float,
        user_id: int = 0,
        key: Hashable = None,
        model: str | None = None,
    ) -> None:
        with self._cond:
            self._lanes.setdefault(user_id, deque()).append(
                Entry(generation_id, units, user_id, key, model)
            )
            self._order = None
            self.version += 1
            self._cond.notify_all()

    def take(
        self,
        timeout: float | None = None,
        max_batch: int = 1,
        loaded: Container[str | None] | None = None,
        switch_wait: float = 0.0,
    ) -> list[Progress]:
        """Block until jobs are available and start the next batch (at most `max_batch`
        jobs); an empty list on timeout, while paused or once closed.

        `loaded` holds the models the renderer has loaded (None: the default model). When
        the next job needs a model switch, the first job in the fair order that needs no
        switch goes first instead, but only while the passed-over job's extra wait stays
        under `switch_wait` seconds: switching does not thrash, and nobody waits long."""
        with self._cond:
            ready = self._cond.wait_for(
                lambda: (self._lanes and not self._paused) or self._closed, timeout
            )
            if not ready or self._closed:
                return []
            order = self._fair_order()
            start = self._first_to_start(order, loaded, switch_wait)
            batch = [order[start]]
            for entry in order[start + 1 : start + max_batch]:
                if entry.key is None or entry.key != batch[0].key:
                    break
                batch.append(entry)
            for entry in batch:
                self._lanes[entry.user_id].remove(entry)
                self._passed_over.pop(entry.generation_id, None)
                self._taken += 1
                self._last_served[entry.user_id] = self._taken
            self._lanes = {user: lane for user, lane in self._lanes.items() if lane}
            self._order = None
            started = time.monotonic()
            taken = [
                Progress(
                    e.generation_id,
                    e.units,
                    e.user_id,
                    started=started,
                    preview_wanted=e.generation_id in self._previews,
                )
                for e in batch
            ]
            # Several workers (one per device) may each be running a batch.
            self.running = [*self.running, *taken]
            self._previews -= {e.generation_id for e in batch}
            self.version += 1
            return taken

    def _first_to_start(
        self, order: list[Entry], loaded: Container[str | None] | None, switch_wait: float
    ) -> int:
        """Index in `order` of the job to start (see take)."""
        head = order[0]
        if loaded is None or switch_wait <= 0 or head.model in loaded:
            return 0
        now = time.monotonic()
        since = self._passed_over.get(head.generation_id, now)
        if now - since >= switch_wait:
            return 0
        # Only the users' first jobs: each user's jobs still start in the order they came.
        heads = len(self._lanes)
        for index, entry in enumerate(order[:heads]):
            if entry.model in loaded:
                self._passed_over[head.generation_id] = since
                return index
        return 0

    def done(self, jobs: list[Progress] | None = None) -> None:
        """The batch `jobs` (a worker's, as take returned it) ended; None: every batch."""
        with self._cond:
            ended = {id(job) for job in jobs} if jobs is not None else None
            self.running = [j for j in self.running if ended is not None and id(j) not in ended]
            self.version += 1
            self._cond.notify_all()

    def want_previews(self, generation_id: int) -> None:
        with self._cond:
            job = self.progress_of(generation_id)
            if job is not None:
                job.preview_wanted = True
            elif any(e.generation_id == generation_id for e in self._fair_order()):
                self._previews.add(generation_id)

    def touch(self) -> None:
        """Something watchers care about changed (a step, a result)."""
        self.version += 1

    def cancel(self, generation_id: int) -> str:
        """ "removed" from the pending jobs, "stopping" a running one, or "inactive"."""
        with self._cond:
            self.version += 1
            for lane in self._lanes.values():
                for entry in lane:
                    if entry.generation_id == generation_id:
                        lane.remove(entry)
                        self._passed_over.pop(generation_id, None)
                        self._lanes = {u: q for u, q in self._lanes.items() if q}
                        self._order = None
                        return "removed"
            for job in self.running:
                if job.generation_id == generation_id:
                    job.request_stop("cancelled")
                    return "stopping"
            return "inactive"

    def progress_of(self, generation_id: int) -> Progress | None:
        for job in list(self.running):
            if job.generation_id == generation_id:
                return job
        return None

    def pause(self) -> None:
        """Hand out no more jobs (draining); the running ones carry on."""
        with self._cond:
            self._paused = True

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self.running, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self.running:
                job.request_stop("shutdown")
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def depth(self) -> int:
        with self._cond:
            return sum(len(lane) for lane in self._lanes.values()) + len(self.running)

    def position(self, generation_id: int) -> tuple[int, float] | None:
        """(1-based place among pending jobs, work units ahead of it incl. the running job)."""
        with self._cond:
            ahead = self._remaining_running()
            for place, entry in enumerate(self._fair_order(), start=1):
                if entry.generation_id == generation_id:
                    return place, ahead
                ahead += entry.units
            return None

    def work_ahead_of_new_job(self) -> float:
        with self._cond:
            return self._remaining_running() + sum(
                e.units for lane in self._lanes.values() for e in lane
            )

    def units_until_first_done(self, user_id: int | None) -> float:
        """Work until the next job of `user_id` (None: anyone's) finishes."""
        with self._cond:
            ahead = self._remaining_running()
            if any(user_id in (None, job.user_id) for job in self.running):
                return ahead
            for entry in self._fair_order():
                ahead += entry.units
                if user_id == entry.user_id:
                    break
            return ahead

    def _fair_order(self) -> list[Entry]:
        """Pending jobs in the order they will start if nothing else arrives."""
        if self._order is None:
            users = sorted(self._lanes, key=lambda user: self._last_served.get(user, 0))
            lanes = [list(self._lanes[user]) for user in users]
            longest = max((len(lane) for lane in lanes), default=0)
            self._order = [lane[i] for i in range(longest) for lane in lanes if i < len(lane)]
        return self._order

    def _remaining_running(self) -> float:
        remaining = 0.0
        for job in self.running:
            done = job.step / job.total_steps if job.total_steps else 0.0
            remaining += job.work_units * (1.0 - done)
        return remaining

