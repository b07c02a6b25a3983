"""What a rendered job leaves behind: its images in the vault, its row in the store.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipelines.spec import GenerationSpec
from server.contract import ErrorCode, ImageGenerationRequest, credits_for, error_object
from server.jobs import infotext
from server.library.checkpoints import ModelEntry
from server.library.loras import ResolvedLora
from server.metrics import Metrics
from server.progress import Progress
from server.store import Store
from server.store.generations import NewImage
from server.store.vault import StoredFiles, Vault

log = logging.getLogger("darkroom.worker")


@dataclass
class Task:
    """A job that passed its checks, with what rendering and recording it need."""

    job: Progress
    row: dict[str, Any]
    request: ImageGenerationRequest
    spec: GenerationSpec
    loras: list[ResolvedLora]
    model: ModelEntry


class ResultWriter:
    def __init__(
        self,
        store: Store,
        vault: Vault,
        url_ttl_seconds: float,
        metrics: Metrics,
        device: Callable[[], str] | None = None,
    ) -> None:
        """`device()`: the render device's name, recorded with each generation it
        completes (None: a remote provider's runner)."""
        self.device = device
        self.metrics = metrics
        self.store = store
        self.vault = vault
        self.url_ttl_seconds = url_ttl_seconds

    def infotext(self, task: Task, seed: int) -> str:
        """AUTOMATIC1111's `parameters` text of one image (server/jobs/infotext.py)."""
        return infotext.for_generation(
            json.loads(task.row["request_json"]),
            task.spec,
            seed,
            task.model.name,
            task.model.sha256,
            [(lora.path, lora.sha256, lora.weight) for lora in task.loras],
        )

    def record(self, task: Task, images: list[Image.Image], seconds: float) -> None:
        row, request, spec, loras = task.row, task.request, task.spec, task.loras
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
                        self.infotext(task, seed),
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
                task.model.name,
                task.model.hash,
            )
            for idx, (files, seed, image) in enumerate(
                zip(written, spec.seeds, images, strict=True)
            )
        ]
        credits = credits_for(spec.width, spec.height, spec.base_steps_run, len(images))
        recorded = False
        try:
            recorded = self.store.complete(
                row["id"],
                new_images,
                credits,
                seconds,
                [(lora.id, lora.weight) for lora in loras],
                self.device() if self.device is not None else None,
            )
        finally:
            if not recorded:
                self.vault.delete(*(name for f in written for name in (f.file_name, f.thumb_name)))
        if not recorded:
            log.info(
                "job %s: finished after it was failed (timeout); images dropped", row["request_id"]
            )
            return
        waited = time.time() - seconds - row["created_at"]
        self.metrics.job_done(waited, seconds, spec.total_steps, len(images))
        log.info(
            "job %s: completed in %.2fs",
            row["request_id"],
            seconds,
            extra={"request_id": row["request_id"], "job": "completed", "seconds": seconds},
        )

    def purge_expired(self) -> None:
        """Delete temporary images whose links have expired."""
        expired = self.store.expired_temporary_images(time.time() - self.url_ttl_seconds)
        if expired:
            self.vault.delete(
                *(n for img in expired for n in (img["file_name"], img["thumb_name"]))
            )
            self.store.mark_purged([img["id"] for img in expired])
            log.info("purged %d expired temporary image(s)", len(expired))


@dataclass
class Previews:
    """The worker's on_latents: every `every` steps, a preview for each job whose event
    stream asked for one. A renderer may call `wanted()` to skip sending latents (a copy
    off the GPU and across a pipe) that nobody would see."""

    jobs: list[Progress]
    specs: list[GenerationSpec]
    every: int
    shown: Callable[[], None]

    def wanted(self) -> bool:
        return self.every > 0 and any(job.preview_wanted for job in self.jobs)

    def __call__(self, step: int, latents: Any) -> None:
        if step % max(self.every, 1) == 0 and self.wanted():
            show_previews(self.jobs, self.specs, step, latents)
            self.shown()


def show_previews(
    jobs: list[Progress], specs: list[GenerationSpec], step: int, latents: Any
) -> None:
    """Give each job that wants one a small JPEG data URL of its first image's latents."""
    from pipelines.progress import latent_previews

    pictures = latent_previews(latents)
    offset = 0
    for job, spec in zip(jobs, specs, strict=True):
        if job.preview_wanted:
            buffer = io.BytesIO()
            pictures[offset].save(buffer, "JPEG", quality=80)
            job.preview = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
            job.preview_step = step
        offset += spec.num_images
