"""The queue: admission, ordering and progress of generation jobs.

The database is the source of truth (a job is a row before anyone hears of it); this
module keeps the in-memory order the worker takes jobs in, and what the worker is doing.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from server import ledger
from server.accounts import User
from server.catalog import LoraCatalog
from server.config import Settings
from server.contract import (
    MAX_SEED,
    ApiError,
    ErrorCode,
    ImageGenerationRequest,
    check_lengths,
    check_limits,
    credits_for,
)
from server.limits import retry_after
from server.store import Store

# Until a job has been measured, assume roughly SDXL base on a modern GPU.
DEFAULT_SECONDS_PER_WORK_UNIT = 0.07
RATE_REFRESH_SECONDS = 1.0


def work_units(width: int, height: int, steps: int, num_images: int) -> float:
    """Megapixel-steps: what a render's duration is proportional to."""
    return width * height / 1e6 * steps * num_images


@dataclass
class Progress:
    """A job the worker is running: its progress, and a flag that stops it between steps.
    The jobs of one batch share their steps."""

    generation_id: int
    work_units: float
    user_id: int = 0
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    total_steps: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "cancelled", "timeout" or "shutdown"
    preview_wanted: bool = False
    preview: str | None = None  # a data URL of the latest latent preview
    preview_step: int = 0

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop.set()


@dataclass(frozen=True)
class Entry:
    generation_id: int
    units: float
    user_id: int
    key: Hashable = None  # jobs with the same key may render as one batch; None: never


class JobQueue:
    """Pending generations, shared by the event loop (put) and the worker thread (take).

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

    def put(
        self, generation_id: int, units: float, user_id: int = 0, key: Hashable = None
    ) -> None:
        with self._cond:
            self._lanes.setdefault(user_id, deque()).append(
                Entry(generation_id, units, user_id, key)
            )
            self._order = None
            self.version += 1
            self._cond.notify_all()

    def put_row(self, row: dict) -> None:
        """Queue a stored pending generation (recovered at start-up, or after a crash)."""
        request = ImageGenerationRequest.model_validate_json(row["request_json"])
        self.put(row["id"], row["work_units"], row["user_id"], batch_key(request))

    def take(self, timeout: float | None = None, max_batch: int = 1) -> list[Progress]:
        """Block until jobs are available and start the next batch (at most `max_batch`
        jobs); an empty list on timeout, while paused or once closed."""
        with self._cond:
            ready = self._cond.wait_for(
                lambda: (self._lanes and not self._paused) or self._closed, timeout
            )
            if not ready or self._closed:
                return []
            order = self._fair_order()
            batch = [order[0]]
            for entry in order[1:max_batch]:
                if entry.key is None or entry.key != batch[0].key:
                    break
                batch.append(entry)
            for entry in batch:
                self._lanes[entry.user_id].popleft()
                self._taken += 1
                self._last_served[entry.user_id] = self._taken
            self._lanes = {user: lane for user, lane in self._lanes.items() if lane}
            self._order = None
            started = time.monotonic()
            self.running = [
                Progress(
                    e.generation_id,
                    e.units,
                    e.user_id,
                    started=started,
                    preview_wanted=e.generation_id in self._previews,
                )
                for e in batch
            ]
            self._previews -= {e.generation_id for e in batch}
            self.version += 1
            return list(self.running)

    def done(self) -> None:
        with self._cond:
            self.running = []
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


def batch_key(request: ImageGenerationRequest) -> Hashable:
    """Requests that may render together: the same shape, steps, sampler, guidance and
    LoRA stack (prompts and seeds may differ)."""
    settings = request.settings
    loras = tuple((lora.id, lora.weight) for lora in request.loras)
    return (
        settings.width,
        settings.height,
        settings.steps,
        settings.cfg_scale,
        settings.sampler,
        loras,
    )


class Admission:
    """Turns a validated request into a persisted, queued job, or refuses it: too many
    active jobs, not enough credits, or a full queue. Nothing is recorded or held then."""

    def __init__(
        self, store: Store, catalog: LoraCatalog, queue: JobQueue, settings: Settings
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.queue = queue
        self.settings = settings
        # (read at, seconds per work unit overall, and by image size in pixels)
        self._rates: tuple[float, float, dict[int, float]] | None = None

    def submit(self, request: ImageGenerationRequest, user: User) -> dict:
        options, settings = request.options, request.settings
        if options.provider != "auto":
            raise ApiError(
                ErrorCode.PROVIDER_ERROR,
                f"Provider {options.provider!r} is not configured on this server",
                {"provider": options.provider, "available": ["auto"]},
            )
        check_limits(request.loras, options.num_images, self.settings.max_loras)
        check_lengths(request.prompt, settings.negative_prompt, self.settings.max_prompt_chars)
        self.catalog.resolve(request.loras)
        seed_fixed = settings.seed != -1
        seed = settings.seed if seed_fixed else secrets.randbelow(MAX_SEED + 1)
        units = work_units(settings.width, settings.height, settings.steps, options.num_images)
        cost = credits_for(settings.width, settings.height, settings.steps, options.num_images)

        def admit(db: sqlite3.Connection) -> None:
            self._check_user_limit(db, user)
            self._check_credits(db, user, cost)
            self._check_queue_bound(db)

        generation_id = self.store.insert_generation(
            uuid.uuid4().hex,
            request.prompt,
            request.model_dump(mode="json"),
            seed,
            seed_fixed,
            units,
            user.id,
            cost,
            admit,
        )
        self.queue.put(generation_id, units, user.id, batch_key(request))
        row = self.store.generation_by_id(generation_id)
        assert row is not None
        return row

    def _check_user_limit(self, db: sqlite3.Connection, user: User) -> None:
        limit = self.settings.max_active_per_user
        active = self.store.active_count(db, user.id)
        if limit > 0 and active >= limit:
            wait = self.estimate_seconds(self.queue.units_until_first_done(user.id))
            raise ApiError(
                ErrorCode.LIMIT_EXCEEDED,
                f"Too many active generations: {active} (at most {limit} per user);"
                " retry when one finishes",
                {"field": "concurrent_generations", "active": active, "limit": limit},
                429,
                {"Retry-After": retry_after(wait)},
            )

    def _check_credits(self, db: sqlite3.Connection, user: User, cost: float) -> None:
        if user.unlimited:
            return
        funds = ledger.balance(db, user.id)
        if cost > funds.available + 1e-9:
            raise ApiError(
                ErrorCode.QUOTA_EXCEEDED,
                f"Not enough credits: this generation costs {cost:g},"
                f" {max(funds.available, 0):g} available",
                {
                    "cost": cost,
                    "balance": round(funds.balance, 4),
                    "held": round(funds.held, 4),
                },
                402,
            )

    def _check_queue_bound(self, db: sqlite3.Connection) -> None:
        bound = self.settings.max_queued
        if bound > 0 and self.store.pending_count(db) >= bound:
            wait = self.estimate_seconds(self.queue.units_until_first_done(None))
            raise ApiError(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"The queue is full ({bound} generations waiting); try again shortly",
                {"reason": "queue_full", "limit": bound},
                503,
                {"Retry-After": retry_after(wait)},
            )

    def estimate_seconds(self, units: float, pixels: int | None = None) -> float:
        """Seconds to render `units` work units, at the speed measured for images of
        `pixels` pixels if there is one, else at the speed of recent jobs of any size."""
        # Every poll asks; the measured speeds are read from the database once a second.
        now = time.monotonic()
        if self._rates is None or now - self._rates[0] > RATE_REFRESH_SECONDS:
            overall = self.store.seconds_per_work_unit() or DEFAULT_SECONDS_PER_WORK_UNIT
            self._rates = (now, overall, self.store.seconds_per_work_unit_by_size())
        _, overall, by_size = self._rates
        return units * by_size.get(pixels, overall)
