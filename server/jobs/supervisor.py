"""Supervision of one device's worker, apart from its job loop (server/jobs/worker.py).

A thread beside the render thread enforces job timeouts, and kills a render process that
does not answer past its job's timeout (a stuck kernel, a stopped process): its jobs fail
as TIMEOUT and the device is started afresh. It restarts a render thread that died, and
retries a start-up that failed (the model would not load, a warm-up or a catalog refresh
raised) after a backoff that doubles with each failure in a row, logging the outage once.
The device's own record (in service or not, its backoff) is server/jobs/device_health.py;
bringing a device back is done here too, but on the render thread, which owns the renderer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from pipelines.spec import Renderer
from server.config import Settings
from server.jobs.device_health import STOPPED, Backoff, DeviceHealth
from server.jobs.failures import timeout_error
from server.jobs.queue import Progress
from server.store import Store

log = logging.getLogger("darkroom.worker")

SUPERVISE_SECONDS = 0.1
# How long a job may ignore its stop flag past its timeout before it is failed regardless
# (and its render process killed).
HANG_GRACE_SECONDS = 10.0


class Supervised(Protocol):
    """What the supervisor sees of its worker (server.jobs.worker.Worker)."""

    renderer: Renderer
    store: Store
    settings: Settings
    health: DeviceHealth
    state: str  # loading, ready or failed
    load_error: str | None
    current: list[Progress]  # the batch being rendered

    @property
    def stopping(self) -> bool: ...

    def run(self) -> None:
        """The render thread's body."""
        ...

    def requeue(self, generation_ids: list[int]) -> int: ...


class Supervisor:
    def __init__(self, worker: Supervised) -> None:
        self.worker = worker
        self.health = worker.health
        self.restarts = 0
        self.stuck_job: int | None = None  # failed as hung; its thread has not come back yet
        self.crashed_jobs: list[int] = []  # the batch the render thread died under
        self.start_up = Backoff(worker.settings.device_retry)
        self._retry_start_at = 0.0  # monotonic
        self._thread = self._spawn()
        self._watcher = threading.Thread(
            target=self._watch, name=f"darkroom-supervisor-{self.health.name}", daemon=True
        )

    @property
    def alive(self) -> bool:
        """The render thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()
        self._watcher.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._watcher.join(timeout)

    def _spawn(self) -> threading.Thread:
        name = f"darkroom-worker-{self.health.name}"
        return threading.Thread(target=self.worker.run, name=name, daemon=True)

    def _watch(self) -> None:
        while not self.worker.stopping:
            time.sleep(SUPERVISE_SECONDS)
            self.check()

    def check(self) -> None:
        self.enforce_timeout()
        if self.alive or self.worker.stopping:
            return
        if self.worker.state != "failed":
            self.restart()
        elif time.monotonic() >= self._retry_start_at:
            self._thread = self._spawn()
            self._thread.start()

    # Start-up (on the render thread).

    def started(self) -> None:
        if self.start_up.failures:
            log.info(
                "device %s: started after %d failed attempt(s)",
                self.health.name,
                self.start_up.failures,
            )
        self.start_up.reset()

    def start_up_failed(self) -> None:
        """The render thread could not start (called in its except block): try again after
        the backoff. The first failure of an outage is logged with its traceback, the
        rest only at debug level."""
        delay = self.start_up.next_delay()
        self._retry_start_at = time.monotonic() + delay
        if self.start_up.failures == 1:
            log.exception(
                "device %s: could not start (%s); retrying in %g s, then less often",
                self.health.name,
                self.worker.load_error,
                delay,
            )
        else:
            log.debug("device %s: start-up failed again; retrying in %g s", self.health.name, delay)

    # Timeouts and hangs.

    def enforce_timeout(self) -> None:
        worker = self.worker
        batch, limit = worker.current, worker.settings.job_timeout
        if not batch or limit <= 0:
            return
        overdue = time.monotonic() - batch[0].started - limit
        if overdue > 0:
            for job in batch:
                job.request_stop("timeout")
        if overdue <= HANG_GRACE_SECONDS or self.stuck_job is not None:
            return
        # It ignores its stop flag (stuck inside a step): fail it for the client now;
        # readiness stays 503 until the thread comes back.
        ids = [job.generation_id for job in batch]
        self.stuck_job = ids[0]
        for generation_id in ids:
            worker.store.fail(generation_id, timeout_error(limit))
        self.health.count(STOPPED, len(ids))
        reason = f"hung: no answer {overdue:.0f} s past its {limit:g} s job timeout"
        if worker.renderer.kill(reason):
            log.error("jobs %s: render process %s; killed", ids, reason)
        else:
            log.error("jobs %s: stuck past their timeout", ids)

    def batch_ended(self, ids: list[int]) -> None:
        if self.stuck_job in ids:
            self.stuck_job = None

    # A render thread that died, and a device out of service.

    def restart(self) -> None:
        self.restarts += 1
        log.error("the worker thread died; restarting it (restart %d)", self.restarts)
        crashed, self.crashed_jobs = self.crashed_jobs, []
        self.worker.requeue(crashed)
        self._thread = self._spawn()
        self._thread.start()

    def back_in_service(self) -> bool:
        """On the render thread, for a device out of service: wait out its backoff, then
        start the renderer afresh (a new render process). False if it is still out (or the
        server is stopping)."""
        worker, health = self.worker, self.health
        while health.seconds_to_retry() > 0:
            if worker.stopping:
                return False
            time.sleep(min(SUPERVISE_SECONDS, health.seconds_to_retry()))
        worker.state = "loading"
        log.info("device %s: retrying (%s)", health.name, health.reason)
        try:
            worker.renderer.close()
            worker.renderer.load()
        except Exception as exc:
            worker.state = "ready"
            health.take_out(f"reload failed: {type(exc).__name__}: {exc}")
            log.exception("device %s: could not load again", health.name)
            return False
        worker.state = "ready"
        health.back_in_service()
        log.info("device %s: back in service", health.name)
        return True
