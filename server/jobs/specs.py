"""From a stored request to what the pipeline renders: the GenerationSpec, and the queue's
batching key, which is pipelines.spec.batch_key of that spec (the one batching rule)."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from pipelines.spec import GenerationSpec, HiresFix, ImageInput, LoraSpec, batch_key
from server.contract import (
    MAX_SEED,
    ApiError,
    ImageGenerationRequest,
    SavePresetRequest,
    stored_request,
)
from server.jobs.image_jobs import image_parts
from server.jobs.queue import JobQueue
from server.library.checkpoints import ModelCatalog, ModelEntry
from server.library.loras import LoraCatalog, ResolvedLora


def resolve_request(
    models: ModelCatalog, catalog: LoraCatalog, request: ImageGenerationRequest | SavePresetRequest
) -> tuple[ModelEntry, list[ResolvedLora]]:
    """The model and LoRAs a request runs on (raises VALIDATION_ERROR or INVALID_LORA);
    LoRAs are judged against that model."""
    model = models.resolve(request.settings.model)
    check = None if model.default or not request.loras else models.lora_check(model)
    return model, catalog.resolve(request.loras, check)


def build_spec(
    request: ImageGenerationRequest,
    seed: int,
    loras: list[ResolvedLora],
    model: ModelEntry | None = None,
    image: ImageInput | None = None,
    hires: HiresFix | None = None,
) -> GenerationSpec:
    """`model` None: the server's default model; `image`, `hires`: an image-to-image's
    parts (server.jobs.image_jobs.image_parts)."""
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
        model=model.spec() if model is not None else None,
        image=image,
        hires=hires,
    )


def queue_key(
    request: ImageGenerationRequest,
    loras: list[ResolvedLora],
    model: ModelEntry,
    parts: dict[str, Any] | None = None,
) -> Hashable:
    """Jobs with equal keys may render as one batch (seeds and prompts do not matter);
    `parts`: an image-to-image's (image_jobs.image_parts)."""
    return batch_key(build_spec(request, 0, loras, model, **(parts or {})))


def model_key(model: ModelEntry) -> str | None:
    """The queue's name for the model a job needs (None: the default model)."""
    spec = model.spec()
    return spec.key if spec is not None else None


def describe_stored(
    models: ModelCatalog, catalog: LoraCatalog, row: dict[str, Any]
) -> tuple[Hashable, str | None]:
    """A stored generation's batching key and model (None, None if they are gone)."""
    request = stored_request(row["request_json"])
    try:
        model, loras = resolve_request(models, catalog, request)
    except ApiError:
        return None, None
    parts = image_parts(json.loads(row["request_json"]))
    return queue_key(request, loras, model, parts), model_key(model)


def enqueue_stored(
    queue: JobQueue, models: ModelCatalog, catalog: LoraCatalog, row: dict[str, Any]
) -> None:
    """Queue a stored pending generation (recovered at start-up, or after a crash). One whose
    model or LoRAs are gone gets no batching key; the worker fails it when it comes up."""
    request = stored_request(row["request_json"])
    try:
        model, loras = resolve_request(models, catalog, request)
    except ApiError:
        queue.put(row["id"], row["work_units"], row["user_id"])
        return
    key = queue_key(request, loras, model, image_parts(json.loads(row["request_json"])))
    queue.put(row["id"], row["work_units"], row["user_id"], key, model_key(model))
