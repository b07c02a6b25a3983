"""The queue: admission, ordering and progress of generation jobs.

The database is the source of truth (a job is a row before anyone hears of it); this
module keeps the in-memory order the worker takes jobs in, and what the worker is doing.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from server.catalog import LoraCatalog
from server.contract import (
    MAX_SEED,
    ApiError,
    ErrorCode,
    ImageGenerationRequest,
    check_limits,
)
from server.store import Store

# Until a job has been measured, assume roughly SDXL base on a modern GPU.
DEFAULT_SECONDS_PER_WORK_UNIT = 0.07
RATE_REFRESH_SECONDS = 1.0


def work_units(width: int, height: int, steps: int, num_images: int) -> float:
    """Megapixel-steps: what a render's duration is proportional to."""
    return width * height / 1e6 * steps * num_images


@dataclass
class Progress:
    """The job the worker is running: its progress, and a flag that stops it between steps."""

    generation_id: int
    work_units: float
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    total_steps: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "cancelled", "timeout" or "shutdown"

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop.set()


class JobQueue:
    """FIFO of generation ids shared by the event loop (put) and the worker thread (take)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: deque[tuple[int, float]] = deque()
        self._closed = False
        self._paused = False
        self.current: Progress | None = None

    def put(self, generation_id: int, units: float) -> None:
        with self._cond:
            self._pending.append((generation_id, units))
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> Progress | None:
        """Block until a job is available; None on timeout, while paused or once closed."""
        with self._cond:
            ready = self._cond.wait_for(
                lambda: (self._pending and not self._paused) or self._closed, timeout
            )
            if not ready or self._closed:
                return None
            generation_id, units = self._pending.popleft()
            self.current = Progress(generation_id, units)
            return self.current

    def done(self) -> None:
        with self._cond:
            self.current = None
            self._cond.notify_all()

    def cancel(self, generation_id: int) -> str:
        """ "removed" from the pending jobs, "stopping" the running one, or "inactive"."""
        with self._cond:
            for entry in self._pending:
                if entry[0] == generation_id:
                    self._pending.remove(entry)
                    return "removed"
            if self.current and self.current.generation_id == generation_id:
                self.current.request_stop("cancelled")
                return "stopping"
            return "inactive"

    def pause(self) -> None:
        """Hand out no more jobs (draining); the running one carries on."""
        with self._cond:
            self._paused = True

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.current is None, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            if self.current:
                self.current.request_stop("shutdown")
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def depth(self) -> int:
        with self._cond:
            return len(self._pending) + (1 if self.current else 0)

    def position(self, generation_id: int) -> tuple[int, float] | None:
        """(1-based place among pending jobs, work units ahead of it incl. the running job)."""
        with self._cond:
            ahead = self._remaining_current()
            for place, (gid, units) in enumerate(self._pending, start=1):
                if gid == generation_id:
                    return place, ahead
                ahead += units
            return None

    def work_ahead_of_new_job(self) -> float:
        with self._cond:
            return self._remaining_current() + sum(units for _, units in self._pending)

    def _remaining_current(self) -> float:
        job = self.current
        if job is None:
            return 0.0
        done = job.step / job.total_steps if job.total_steps else 0.0
        return job.work_units * (1.0 - done)


class Admission:
    """Turns a validated request into a persisted, queued job."""

    def __init__(self, store: Store, catalog: LoraCatalog, queue: JobQueue, max_loras: int) -> None:
        self.store = store
        self.catalog = catalog
        self.queue = queue
        self.max_loras = max_loras
        self._rate: tuple[float, float] | None = None  # (measured at, seconds per unit)

    def submit(self, request: ImageGenerationRequest) -> dict:
        options, settings = request.options, request.settings
        if options.provider != "auto":
            raise ApiError(
                ErrorCode.PROVIDER_ERROR,
                f"Provider {options.provider!r} is not configured on this server",
                {"provider": options.provider, "available": ["auto"]},
            )
        check_limits(request.loras, options.num_images, self.max_loras)
        self.catalog.resolve(request.loras)
        seed_fixed = settings.seed != -1
        seed = settings.seed if seed_fixed else secrets.randbelow(MAX_SEED + 1)
        units = work_units(settings.width, settings.height, settings.steps, options.num_images)
        request_id = uuid.uuid4().hex
        generation_id = self.store.insert_generation(
            request_id, request.prompt, request.model_dump(mode="json"), seed, seed_fixed, units
        )
        self.queue.put(generation_id, units)
        row = self.store.generation_by_id(generation_id)
        assert row is not None
        return row

    def estimate_seconds(self, units: float) -> float:
        # Every poll asks; the measured speed is read from the database once a second.
        now = time.monotonic()
        if self._rate is None or now - self._rate[0] > RATE_REFRESH_SECONDS:
            rate = self.store.seconds_per_work_unit() or DEFAULT_SECONDS_PER_WORK_UNIT
            self._rate = (now, rate)
        return units * self._rate[1]
