"""The GPU thread: takes jobs, calls pipelines/, writes the vault, records results.

One thread owns the pipeline, so nothing in pipelines/ needs to be thread-safe, and the
event loop never waits on the GPU. Its timeouts, restarts and recovery are the
supervisor's (server/jobs/supervisor.py).
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
from server.jobs.supervisor import Supervisor
from server.library.checkpoints import ModelCatalog
from server.library.loras import LoraCatalog
from server.metrics import Metrics
from server.progress import Progress
from server.store import Store
from server.store.generations import ACTIVE
from server.store.vault import Vault

log = logging.getLogger("darkroom.worker")

IDLE_SECONDS = 30.0


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
    """The render thread's job loop; `supervisor` watches it from a thread of its own."""

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
        self._stopping = False
        self._speed: float | None = None
        self.supervisor = Supervisor(self)

    @property
    def device_name(self) -> str:
        """The device's name: as --devices lists it, else the one the renderer picked."""
        if self.health.name == "default":
            return str(self.renderer.device)
        return self.health.name

    def start(self) -> None:
        self.supervisor.start()

    @property
    def stopping(self) -> bool:
        return self._stopping or self.queue.closed

    def drain(self, timeout: float) -> bool:
        """Take no new jobs and wait for the running one; False if it did not end in time."""
        self.queue.pause()
        return self.queue.wait_idle(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running job (it goes back to the queue) and end both threads."""
        self._stopping = True
        self.queue.close()
        self.supervisor.join(timeout)
        self.renderer.close()

    @property
    def max_batch(self) -> int:
        """0 means the device's default, which the loaded renderer's plan knows (see
        pipelines.tuning)."""
        return self.settings.max_batch or self.renderer.plan.max_batch

    @property
    def alive(self) -> bool:
        return self.supervisor.alive

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    @property
    def stuck_job(self) -> int | None:
        return self.supervisor.stuck_job

    def run(self) -> None:
        """The render thread: start up, then render jobs until the queue closes."""
        self.state = "loading"
        lower_priority()
        try:
            self._start_up()
        except Exception as exc:
            self.state, self.load_error = "failed", f"{type(exc).__name__}: {exc}"
            self.supervisor.start_up_failed()
            return
        self.supervisor.started()
        self.state, self.load_error = "ready", None
        log.info("model %s ready on %s", self.renderer.model, self.renderer.device)
        self._job_loop()

    def _start_up(self) -> None:
        self.renderer.load()
        if self.settings.compile:
            log.info("compiling: warm-up renders at %s", self.settings.warmup_sizes)
            self.renderer.warmup(self.settings.warmup)
        self._measure_speed()
        # Loading may have written files (the tiny model and its LoRAs): list them too.
        self.models.refresh()
        self.catalog.refresh(check=self.renderer.lora_compatibility)

    def _job_loop(self) -> None:
        while True:
            if self.health.out_of_service and not self.supervisor.back_in_service():
                if self.stopping:
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
                self.supervisor.crashed_jobs = ids
                return
            finally:
                self.supervisor.batch_ended(ids)
                self.current = []
                self.queue.done(batch)

    def loaded_models(self) -> set[str | None]:
        """The models the renderer holds, as the queue names them (None: the default)."""
        default = self.renderer.model_key(None)
        return {None if key == default else key for key in self.renderer.loaded_models}

    def _measure_speed(self) -> None:
        """One short timed render on this device, so that estimates are in its order of
        magnitude before the first job completes (a CPU is ~100x slower than a GPU)."""
        if self._speed is not None:
            return
        # A compiled model measures at a warmed-up size (another would compile anew).
        size = self.settings.warmup[:1] if self.settings.compile else []
        try:
            measure = self.renderer.measure_speed
            self._speed = measure(*size[0]) if size else measure()
        except Exception:
            log.exception("could not measure the render speed; estimates assume a GPU")
            return
        if self._speed is not None:
            log.info("measured %.3g s per megapixel-step on %s", self._speed, self.renderer.device)

    def measured_speed(self) -> float | None:
        """Seconds per work unit of the start-up measurement (None until it is done)."""
        return self._speed

    def requeue(self, generation_ids: list[int]) -> int:
        """The jobs' renderer died under them: run them again, up to max_attempts starts.
        How many were still running (not failed already, as a hung job is)."""
        running = 0
        for generation_id in generation_ids:
            row = self.store.generation_by_id(generation_id)
            if row and row["status"] == "processing":
                running += 1
                if row["attempts"] >= self.settings.max_attempts:
                    self.store.fail(generation_id, gave_up_error(row["attempts"]))
                else:
                    self.store.requeue(generation_id)
                    enqueue_stored(self.queue, self.models, self.catalog, row)
        return running

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
        requeued = self.requeue([task.job.generation_id for task in tasks])
        name = self.health.name
        log.error("device %s: %s; out of service, %d job(s) re-queued", name, reason, requeued)
        self.health.died(reason, requeued)

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
