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
from typing import Protocol

from PIL import Image

from pipelines.spec import GenerationSpec, LoraSpec, RenderInterrupted
from server.catalog import LoraCatalog, ResolvedLora
from server.contract import (
    MAX_SEED,
    ApiError,
    ErrorCode,
    ImageGenerationRequest,
    credits_for,
    error_object,
)
from server.jobs import JobQueue, Progress
from server.store import ACTIVE, NewImage, Store
from server.vault import StoredFiles, Vault

log = logging.getLogger("darkroom.worker")

IDLE_SECONDS = 30.0


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
    def __init__(
        self,
        renderer: Renderer,
        store: Store,
        vault: Vault,
        queue: JobQueue,
        catalog: LoraCatalog,
        url_ttl_seconds: float,
    ) -> None:
        self.renderer = renderer
        self.store = store
        self.vault = vault
        self.queue = queue
        self.catalog = catalog
        self.url_ttl_seconds = url_ttl_seconds
        self.state = "loading"
        self.load_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="darkroom-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running job (it goes back to pending) and end the thread."""
        self.queue.close()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.renderer.load()
        except Exception as exc:
            self.state, self.load_error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("could not load model %s", self.renderer.model)
            return
        # Loading may have written files (the tiny model brings its LoRAs): list them too.
        self.catalog.refresh()
        self.state = "ready"
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
            finally:
                self.queue.done()

    def _process(self, job: Progress) -> None:
        row = self.store.generation_by_id(job.generation_id)
        if row is None or row["status"] not in ACTIVE:
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

        def on_step(step: int, total: int) -> None:
            job.step, job.total_steps = step, total

        started = time.perf_counter()
        try:
            images = self.renderer.render(spec, on_step=on_step, should_stop=job.stop.is_set)
        except RenderInterrupted:
            log.info("job %s: interrupted by shutdown, stays queued", row["request_id"])
            return
        except Exception as exc:
            log.exception("job %s: generation failed", row["request_id"])
            self.store.fail(job.generation_id, provider_error(exc))
            return
        seconds = time.perf_counter() - started
        self._record(row, request, spec, images, seconds, loras)

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
        try:
            self.store.complete(
                row["id"], new_images, credits, seconds, [(lora.id, lora.weight) for lora in loras]
            )
        except BaseException:
            self.vault.delete(*(name for f in written for name in (f.file_name, f.thumb_name)))
            raise
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


def provider_error(exc: Exception) -> dict:
    """A failure safe to show a client: the exception's kind and first line, no traceback."""
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return error_object(
        ErrorCode.PROVIDER_ERROR,
        "Image generation failed",
        {"reason": f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__},
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
