"""From a stored request to what the pipeline renders: the GenerationSpec, and the queue's
batching key, which is pipelines.spec.batch_key of that spec (the one batching rule)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from pipelines.spec import GenerationSpec, LoraSpec, batch_key
from server.contract import MAX_SEED, ApiError, ImageGenerationRequest
from server.jobs.queue import JobQueue
from server.library.loras import LoraCatalog, ResolvedLora


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


def queue_key(request: ImageGenerationRequest, loras: list[ResolvedLora]) -> Hashable:
    """Jobs with equal keys may render as one batch (seeds and prompts do not matter)."""
    return batch_key(build_spec(request, 0, loras))


def enqueue_stored(queue: JobQueue, catalog: LoraCatalog, row: dict[str, Any]) -> None:
    """Queue a stored pending generation (recovered at start-up, or after a crash). One whose
    LoRAs are gone gets no batching key; the worker fails it when it comes up."""
    request = ImageGenerationRequest.model_validate_json(row["request_json"])
    try:
        key = queue_key(request, catalog.resolve(request.loras))
    except ApiError:
        key = None
    queue.put(row["id"], row["work_units"], row["user_id"], key)
