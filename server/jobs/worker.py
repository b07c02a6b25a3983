"""The GPU thread: takes jobs, calls pipelines/, writes the vault, records results.

One thread owns the pipeline, so nothing in pipelines/ needs to be thread-safe, and the
event loop never waits on the GPU.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from pipelines.loras import LoraLoadError
from pipelines.spec import ModelLoadError, Renderer, RenderInterrupted
from server.config import Settings
from server.contract import ApiError, ErrorCode, error_object, stored_request
from server.jobs.device_health import COMPLETED, REQUEST_ERROR, STOPPED, DeviceHealth
from server.jobs.failures import (
    OutOfMemory,
    cancelled_error,
    gave_up_error,
    model_load_error,
    provider_error,
    timeout_error,
)
from server.jobs.image_jobs import image_parts
from server.jobs.queue import JobQueue
from server.jobs.render_process import RENDER_NICENESS, RenderProcessDied
from server.jobs.rendering import render_jobs
from server.jobs.results import ResultWriter, Task
from server.jobs.specs import build_spec, enqueue_stored, resolve_request
from server.library.checkpoints import ModelCatalog
from server.library.loras import LoraCatalog
from server.metrics import Metrics
from server.progress import Progress
from server.store import Store
from server.store.generations import ACTIVE
from server.store.vault import Vault

log = logging.getLogger("darkroom.worker")

IDLE_SECONDS = 30.0
SUPERVISE_SECONDS = 0.1
# How long a job may ignore its stop flag past its timeout before it is failed regardless.
HANG_GRACE_SECONDS = 10.0
RELOAD_BACKOFF_SECONDS = 30.0


def lower_priority() -> None:
    """Nice the render thread (and the OpenMP threads it creates, which inherit it) so
    that the event loop answers at once however hard the render works; it must run
    before the thread's first torch operation. Linux only: a native id names a thread
    there."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RENDER_NICENESS)
    except OSError as exc:
        log.warning("could not lower the render thread's priority: %s", exc)


class Worker:
    """The render thread, and a supervisor thread that enforces job timeouts and brings the
    render thread back if it dies."""

    def __init__(
        self,
        renderer: Renderer,
        store: Store,
        vault: Vault,
        queue: JobQueue,
        catalog: LoraCatalog,
        models: ModelCatalog,
        settings: Settings,
        metrics: Metrics,
        health: DeviceHealth | None = None,
    ) -> None:
        self.renderer = renderer
        # One worker per device (server/jobs/devices.py); its record, out of service or not.
        self.health = health or DeviceHealth("default")
        self.current: list[Progress] = []  # the batch this worker renders now
        self.store = store
        self.vault = vault
        self.queue = queue
        self.catalog = catalog
        self.models = models
        self.settings = settings
        self.results = ResultWriter(
            store, vault, settings.url_ttl_hours * 3600, metrics, lambda: self.device_name
        )
        self.state = "loading"
        self.load_error: str | None = None
        self.restarts = 0
        self.stuck_job: int | None = None
        self._stopping = False
        self._crashed_jobs: list[int] = []
        self._speed: float | None = None
        self._thread = self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"darkroom-supervisor-{self.health.name}", daemon=True
        )

    def _spawn(self) -> threading.Thread:
        name = f"darkroom-worker-{self.health.name}"
        return threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def device_name(self) -> str:
        """The device's name: as --devices lists it, else the one the renderer picked."""
        if self.health.name == "default":
            return str(self.renderer.device)
        return self.health.name

    def start(self) -> None:
        self._thread.start()
        self._supervisor.start()

    def drain(self, timeout: float) -> bool:
        """Take no new jobs and wait for the running one; False if it did not end in time."""
        self.queue.pause()
        return self.queue.wait_idle(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running job (it goes back to the queue) and end both threads."""
        self._stopping = True
        self.queue.close()
        self._thread.join(timeout)
        self._supervisor.join(timeout)
        close = getattr(self.renderer, "close", None)
        if close is not None:
            close()

    @property
    def max_batch(self) -> int:
        """0 means the device's default, which the loaded renderer's plan knows (see
        pipelines.tuning)."""
        plan = getattr(self.renderer, "plan", None)
        return self.settings.max_batch or getattr(plan, "max_batch", 1)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        self.state = "loading"
        lower_priority()
        try:
            self.renderer.load()
        except Exception as exc:
            self.state, self.load_error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("could not load model %s", self.renderer.model)
            return
        warmup = getattr(self.renderer, "warmup", None)
        if self.settings.compile and warmup is not None:
            log.info("compiling: warm-up renders at %s", self.settings.warmup_sizes)
            warmup(self.settings.warmup)
        self._measure_speed()
        # Loading may have written files (the tiny model and its LoRAs): list them too.
        self.models.refresh()
        self.catalog.refresh(check=getattr(self.renderer, "lora_compatibility", None))
        self.state, self.load_error = "ready", None
        log.info("model %s ready on %s", self.renderer.model, self.renderer.device)
        while True:
            if self.health.out_of_service and not self._back_in_service():
                if self.queue.closed or self._stopping:
                    return
                continue
            batch = self.queue.take(
                timeout=IDLE_SECONDS,
                max_batch=self.max_batch,
                loaded=self.loaded_models(),
                switch_wait=self.settings.switch_wait,
            )
            if not batch:
                if self.queue.closed:
                    return
                self.purge_expired()
                continue
            ids = [job.generation_id for job in batch]
            self.current = batch
            try:
                self._process(batch)
            except Exception:
                # Bookkeeping failed (database gone?): the jobs stay active and run after restart.
                log.exception("jobs %s: could not record their outcome", ids)
            except BaseException:
                # Whatever this was, the thread is done for: the supervisor starts another.
                log.critical("jobs %s: the worker thread died", ids, exc_info=True)
                self._crashed_jobs = ids
                return
            finally:
                if self.stuck_job in ids:
                    self.stuck_job = None
                self.current = []
                self.queue.done(batch)

    def _back_in_service(self) -> bool:
        """Out of service: wait out the backoff, then start the renderer afresh (a new
        render process). False if it is still out (or the server is stopping)."""
        while self.health.seconds_to_retry() > 0:
            if self.queue.closed or self._stopping:
                return False
            time.sleep(min(SUPERVISE_SECONDS, self.health.seconds_to_retry()))
        self.state = "loading"
        log.info("device %s: retrying (%s)", self.health.name, self.health.reason)
        try:
            close = getattr(self.renderer, "close", None)
            if close is not None:
                close()
            self.renderer.load()
        except Exception as exc:
            self.state = "ready"
            self.health.take_out(f"reload failed: {type(exc).__name__}: {exc}")
            log.exception("device %s: could not load again", self.health.name)
            return False
        self.state = "ready"
        self.health.back_in_service()
        log.info("device %s: back in service", self.health.name)
        return True

    def loaded_models(self) -> set[str | None]:
        """The models the renderer holds, as the queue names them (None: the default)."""
        held = getattr(self.renderer, "loaded_models", None)
        if held is None:
            return {None}
        default = self.renderer.model_key(None)  # type: ignore[attr-defined]
        return {None if key == default else key for key in held}

    def _measure_speed(self) -> None:
        """One short timed render on this device, so that estimates are in its order of
        magnitude before the first job completes (a CPU is ~100x slower than a GPU)."""
        measure = getattr(self.renderer, "measure_speed", None)
        if measure is None or self._speed is not None:
            return
        # A compiled model measures at a warmed-up size (another would compile anew).
        size = self.settings.warmup[:1] if self.settings.compile else []
        try:
            self._speed = float(measure(*size[0]) if size else measure())
        except Exception:
            log.exception("could not measure the render speed; estimates assume a GPU")
            return
        log.info("measured %.3g s per megapixel-step on %s", self._speed, self.renderer.device)

    def measured_speed(self) -> float | None:
        """Seconds per work unit of the start-up measurement (None until it is done)."""
        return self._speed

    def _supervise(self) -> None:
        failed_since: float | None = None
        while not self._stopping:
            time.sleep(SUPERVISE_SECONDS)
            self._enforce_timeout()
            if self._thread.is_alive() or self._stopping:
                continue
            if self.state != "failed":
                self._restart()
                continue
            # The model would not load: try again now and then, readiness 503 meanwhile.
            failed_since = failed_since or time.monotonic()
            if time.monotonic() - failed_since >= RELOAD_BACKOFF_SECONDS:
                failed_since = None
                self._thread = self._spawn()
                self._thread.start()

    def _enforce_timeout(self) -> None:
        batch, limit = self.current, self.settings.job_timeout
        if not batch or limit <= 0:
            return
        overdue = time.monotonic() - batch[0].started - limit
        if overdue > 0:
            for job in batch:
                job.request_stop("timeout")
        if overdue > HANG_GRACE_SECONDS and self.stuck_job is None:
            # It ignores its stop flag (stuck inside a step): fail it for the client now;
            # readiness stays 503 until the thread comes back.
            self.stuck_job = batch[0].generation_id
            for job in batch:
                self.store.fail(job.generation_id, timeout_error(limit))
            log.error("jobs %s: stuck past their timeout", [j.generation_id for j in batch])

    def _restart(self) -> None:
        self.restarts += 1
        log.error("the worker thread died; restarting it (restart %d)", self.restarts)
        crashed, self._crashed_jobs = self._crashed_jobs, []
        self._requeue(crashed)
        self._thread = self._spawn()
        self._thread.start()

    def _requeue(self, generation_ids: list[int]) -> None:
        """The jobs' renderer died under them: run them again, up to max_attempts starts."""
        for generation_id in generation_ids:
            row = self.store.generation_by_id(generation_id)
            if row and row["status"] == "processing":
                if row["attempts"] >= self.settings.max_attempts:
                    self.store.fail(generation_id, gave_up_error(row["attempts"]))
                else:
                    self.store.requeue(generation_id)
                    enqueue_stored(self.queue, self.models, self.catalog, row)

    def _process(self, batch: list[Progress]) -> None:
        tasks = [task for job in batch if (task := self._prepare(job)) is not None]
        if not tasks:
            return
        names = ", ".join(task.row["request_id"] for task in tasks)
        log.info("jobs %s: rendering %d image(s)", names, sum(t.spec.num_images for t in tasks))
        started = time.perf_counter()
        try:
            results = render_jobs(
                self.renderer,
                [task.spec for task in tasks],
                [task.job for task in tasks],
                self.queue.touch,
                self.settings.preview_every,
            )
        except RenderInterrupted:
            for task in tasks:
                self._stopped(task.job, task.row["request_id"])
            return
        except RenderProcessDied as exc:
            self._died(tasks, str(exc))
            return
        except LoraLoadError as exc:
            self.health.count(REQUEST_ERROR, len(tasks))
            log.warning("jobs %s: %s", names, exc)
            error = self.catalog.load_failed(exc.key, exc.reason)
            for task in tasks:
                self.store.fail(task.job.generation_id, error)
            return
        except ModelLoadError as exc:
            self.health.count(REQUEST_ERROR, len(tasks))
            log.error("jobs %s: %s", names, exc)
            for task in tasks:
                self.store.fail(task.job.generation_id, model_load_error(task.model, exc.reason))
            return
        except Exception as exc:
            log.exception("jobs %s: generation failed", names)
            for task in tasks:
                self.store.fail(task.job.generation_id, provider_error(exc))
            if isinstance(exc, OutOfMemory):
                self.health.count(REQUEST_ERROR, len(tasks))
            elif self.health.failed(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"):
                log.error("device %s: out of service (%s)", self.health.name, self.health.reason)
            return
        seconds = time.perf_counter() - started
        total_images = sum(len(images) for images in results)
        for task, images in zip(tasks, results, strict=True):
            if task.job.stop_reason:
                self._stopped(task.job, task.row["request_id"])
                continue
            # A batch's time is shared by its images.
            share = seconds * len(images) / max(1, total_images)
            self.results.record(task, images, share)
            self.health.count(COMPLETED)

    def _died(self, tasks: list[Task], reason: str) -> None:
        """The render process died: its jobs go back to the queue (or stay queued for the
        next start when the server is stopping) and the device out of service."""
        if self._stopping or self.queue.closed:
            for task in tasks:
                self._stopped(task.job, task.row["request_id"])
            return
        log.error("device %s: %s; out of service, its jobs re-queued", self.health.name, reason)
        self.health.died(reason, len(tasks))
        self._requeue([task.job.generation_id for task in tasks])

    def _prepare(self, job: Progress) -> Task | None:
        """Check a job is still wanted and startable; mark it processing."""
        row = self.store.generation_by_id(job.generation_id)
        if row is None or row["status"] not in ACTIVE:
            return None
        age, max_age = time.time() - row["created_at"], self.settings.max_queue_age
        if max_age > 0 and age > max_age and row["status"] == "pending":
            self.store.fail(
                job.generation_id,
                error_object(
                    ErrorCode.EXPIRED,
                    f"Waited {age:.0f} s in the queue (limit {max_age:g} s)",
                    {"reason": "expired", "waited_seconds": round(age), "limit_seconds": max_age},
                ),
            )
            return None
        request = stored_request(row["request_json"])
        try:
            model, loras = resolve_request(self.models, self.catalog, request)
        except ApiError as exc:
            self.store.fail(job.generation_id, error_object(exc.code, exc.message, exc.details))
            return None
        parts = image_parts(json.loads(row["request_json"]), self.vault)
        spec = build_spec(request, row["seed"], loras, model, **parts)
        if not self.store.mark_processing(job.generation_id):
            return None
        job.total_steps = spec.total_steps
        return Task(job, row, request, spec, loras, model)

    def _stopped(self, job: Progress, request_id: str) -> None:
        reason = job.stop_reason
        self.health.count(STOPPED)
        log.info("job %s: stopped (%s)", request_id, reason)
        if reason == "cancelled":
            self.store.fail(job.generation_id, cancelled_error())
        elif reason == "timeout":
            self.store.fail(job.generation_id, timeout_error(self.settings.job_timeout))
        else:
            self.store.release(job.generation_id)

    def purge_expired(self) -> None:
        self.results.purge_expired()
