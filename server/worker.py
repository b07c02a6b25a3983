"""The GPU thread: takes jobs, calls pipelines/, writes the vault, records results.

One thread owns the pipeline, so nothing in pipelines/ needs to be thread-safe, and the
event loop never waits on the GPU.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from PIL import Image

from pipelines.loras import LoraLoadError
from pipelines.spec import GenerationSpec, LoraSpec, RenderInterrupted
from server.catalog import LoraCatalog, ResolvedLora
from server.config import Settings
from server.contract import (
    MAX_SEED,
    ApiError,
    ErrorCode,
    ImageGenerationRequest,
    credits_for,
    error_object,
)
from server.failures import (
    OutOfMemory,
    cancelled_error,
    gave_up_error,
    is_out_of_memory,
    provider_error,
    timeout_error,
)
from server.jobs import JobQueue, Progress
from server.store import ACTIVE, NewImage, Store
from server.vault import StoredFiles, Vault

log = logging.getLogger("darkroom.worker")

IDLE_SECONDS = 30.0
SUPERVISE_SECONDS = 0.1
# How long a job may ignore its stop flag past its timeout before it is failed regardless.
HANG_GRACE_SECONDS = 10.0
RELOAD_BACKOFF_SECONDS = 30.0


class Renderer(Protocol):
    model: str
    device: str

    def load(self) -> None: ...

    def render(
        self,
        spec: GenerationSpec,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Image.Image]: ...


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
        settings: Settings,
    ) -> None:
        self.renderer = renderer
        self.store = store
        self.vault = vault
        self.queue = queue
        self.catalog = catalog
        self.settings = settings
        self.url_ttl_seconds = settings.url_ttl_hours * 3600
        self.state = "loading"
        self.load_error: str | None = None
        self.restarts = 0
        self.stuck_job: int | None = None
        self._stopping = False
        self._crashed_job: int | None = None
        self._thread = self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="darkroom-supervisor", daemon=True
        )

    def _spawn(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="darkroom-worker", daemon=True)

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

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        self.state = "loading"
        try:
            self.renderer.load()
        except Exception as exc:
            self.state, self.load_error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("could not load model %s", self.renderer.model)
            return
        # Loading may have written files (the tiny model brings its LoRAs): list them too.
        self.catalog.refresh(check=getattr(self.renderer, "lora_compatibility", None))
        self.state, self.load_error = "ready", None
        log.info("model %s ready on %s", self.renderer.model, self.renderer.device)
        while True:
            job = self.queue.take(timeout=IDLE_SECONDS)
            if job is None:
                if self.queue.closed:
                    return
                self.purge_expired()
                continue
            try:
                self._process(job)
            except Exception:
                # Bookkeeping failed (database gone?): the job stays active and runs after restart.
                log.exception("job %s: could not record its outcome", job.generation_id)
            except BaseException:
                # Whatever this was, the thread is done for: the supervisor starts another.
                log.critical("job %s: the worker thread died", job.generation_id, exc_info=True)
                self._crashed_job = job.generation_id
                return
            finally:
                if self.stuck_job == job.generation_id:
                    self.stuck_job = None
                self.queue.done()

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
        job, limit = self.queue.current, self.settings.job_timeout
        if job is None or limit <= 0:
            return
        overdue = time.monotonic() - job.started - limit
        if overdue > 0:
            job.request_stop("timeout")
        if overdue > HANG_GRACE_SECONDS and self.stuck_job != job.generation_id:
            # It ignores its stop flag (stuck inside a step): fail it for the client now;
            # readiness stays 503 until the thread comes back.
            self.stuck_job = job.generation_id
            self.store.fail(job.generation_id, timeout_error(limit))
            log.error("job %s: stuck past its timeout", job.generation_id)

    def _restart(self) -> None:
        self.restarts += 1
        log.error("the worker thread died; restarting it (restart %d)", self.restarts)
        crashed, self._crashed_job = self._crashed_job, None
        if crashed is not None:
            row = self.store.generation_by_id(crashed)
            if row and row["status"] == "processing":
                if row["attempts"] >= self.settings.max_attempts:
                    self.store.fail(crashed, gave_up_error(row["attempts"]))
                else:
                    self.store.requeue(crashed)
                    self.queue.put(crashed, row["work_units"])
        self._thread = self._spawn()
        self._thread.start()

    def _process(self, job: Progress) -> None:
        row = self.store.generation_by_id(job.generation_id)
        if row is None or row["status"] not in ACTIVE:
            return
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
            return
        request = ImageGenerationRequest.model_validate(json.loads(row["request_json"]))
        try:
            loras = self.catalog.resolve(request.loras)
        except ApiError as exc:
            self.store.fail(job.generation_id, error_object(exc.code, exc.message, exc.details))
            return
        spec = build_spec(request, row["seed"], loras)
        self.store.mark_processing(job.generation_id)
        job.total_steps = spec.steps
        log.info("job %s: rendering %d image(s)", row["request_id"], spec.num_images)
        started = time.perf_counter()
        try:
            images = self._render(spec, job)
            if job.stop_reason:
                raise RenderInterrupted
        except RenderInterrupted:
            self._stopped(job, row["request_id"])
            return
        except LoraLoadError as exc:
            log.warning("job %s: %s", row["request_id"], exc)
            self.store.fail(job.generation_id, self.catalog.load_failed(exc.key, exc.reason))
            return
        except Exception as exc:
            log.exception("job %s: generation failed", row["request_id"])
            self.store.fail(job.generation_id, provider_error(exc))
            return
        self._record(row, request, spec, images, time.perf_counter() - started, loras)

    def _render(self, spec: GenerationSpec, job: Progress) -> list[Image.Image]:
        def on_step(step: int, total: int) -> None:
            job.step, job.total_steps = step, total

        try:
            return self.renderer.render(spec, on_step=on_step, should_stop=job.stop.is_set)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._free_memory()
            if spec.num_images == 1:
                raise OutOfMemory from exc
        log.warning("out of memory with %d images at once; trying one at a time", spec.num_images)
        images: list[Image.Image] = []
        try:
            for seed in spec.seeds:
                single = replace(spec, seeds=(seed,))
                images += self.renderer.render(single, on_step=on_step, should_stop=job.stop.is_set)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._free_memory()
            raise OutOfMemory from exc
        return images

    def _free_memory(self) -> None:
        free = getattr(self.renderer, "free_memory", None)
        if free is not None:
            free()

    def _stopped(self, job: Progress, request_id: str) -> None:
        reason = job.stop_reason
        log.info("job %s: stopped (%s)", request_id, reason)
        if reason == "cancelled":
            self.store.fail(job.generation_id, cancelled_error())
        elif reason == "timeout":
            self.store.fail(job.generation_id, timeout_error(self.settings.job_timeout))
        else:
            self.store.release(job.generation_id)

    def _record(
        self,
        row: dict,
        request: ImageGenerationRequest,
        spec: GenerationSpec,
        images: list[Image.Image],
        seconds: float,
        loras: list[ResolvedLora],
    ) -> None:
        options = request.options
        per_image_ms = round(seconds * 1000 / max(1, len(images)))
        written: list[StoredFiles] = []
        try:
            for image, seed in zip(images, spec.seeds, strict=True):
                written.append(
                    self.vault.save(
                        image,
                        options.format,
                        options.quality,
                        options.save_to_vault,
                        a1111_parameters(spec, seed, self.renderer.model),
                    )
                )
        except OSError as exc:
            self.vault.delete(*(name for f in written for name in (f.file_name, f.thumb_name)))
            log.error("job %s: could not write images: %s", row["request_id"], exc)
            self.store.fail(
                row["id"],
                error_object(
                    ErrorCode.PROVIDER_ERROR,
                    "Could not store the generated images",
                    {"reason": exc.strerror or type(exc).__name__},
                ),
            )
            return
        new_images = [
            NewImage(
                idx,
                files.token,
                seed,
                image.width,
                image.height,
                options.format,
                files.file_name,
                files.thumb_name,
                options.save_to_vault,
                per_image_ms,
            )
            for idx, (files, seed, image) in enumerate(
                zip(written, spec.seeds, images, strict=True)
            )
        ]
        credits = credits_for(spec.width, spec.height, spec.steps, len(images))
        recorded = False
        try:
            recorded = self.store.complete(
                row["id"], new_images, credits, seconds, [(lora.id, lora.weight) for lora in loras]
            )
        finally:
            if not recorded:
                self.vault.delete(*(name for f in written for name in (f.file_name, f.thumb_name)))
        if not recorded:
            log.info(
                "job %s: finished after it was failed (timeout); images dropped", row["request_id"]
            )
            return
        log.info("job %s: completed in %.2fs", row["request_id"], seconds)

    def purge_expired(self) -> None:
        """Delete temporary images whose links have expired."""
        expired = self.store.expired_temporary_images(time.time() - self.url_ttl_seconds)
        if expired:
            self.vault.delete(
                *(n for img in expired for n in (img["file_name"], img["thumb_name"]))
            )
            self.store.mark_purged([img["id"] for img in expired])
            log.info("purged %d expired temporary image(s)", len(expired))


def build_spec(
    request: ImageGenerationRequest, seed: int, loras: list[ResolvedLora]
) -> GenerationSpec:
    settings = request.settings
    return GenerationSpec(
        prompt=request.prompt,
        negative_prompt=settings.negative_prompt,
        width=settings.width,
        height=settings.height,
        steps=settings.steps,
        cfg_scale=settings.cfg_scale,
        sampler=settings.sampler,
        seeds=tuple((seed + i) % (MAX_SEED + 1) for i in range(request.options.num_images)),
        loras=tuple(LoraSpec(lora.sha256, str(lora.path), lora.weight) for lora in loras),
    )


def a1111_parameters(spec: GenerationSpec, seed: int, model: str) -> str:
    """AUTOMATIC1111's infotext, so its PNG Info tab can read our images back."""
    lines = [spec.prompt]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    lines.append(
        f"Steps: {spec.steps}, Sampler: {spec.sampler}, CFG scale: {spec.cfg_scale:g}, "
        f"Seed: {seed}, Size: {spec.width}x{spec.height}, Model: {model}, Generator: Darkroom"
    )
    return "\n".join(lines)
