"""From a stored request to what the pipeline renders: the GenerationSpec, and the queue's
batching key, which is pipelines.spec.batch_key of that spec (the one batching rule)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from pipelines.spec import GenerationSpec, LoraSpec, batch_key
from server.contract import (
    MAX_SEED,
    ApiError,
    ImageGenerationRequest,
    SavePresetRequest,
    stored_request,
)
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
) -> GenerationSpec:
    """`model` None: the server's default model."""
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
    )


def queue_key(
    request: ImageGenerationRequest, loras: list[ResolvedLora], model: ModelEntry
) -> Hashable:
    """Jobs with equal keys may render as one batch (seeds and prompts do not matter)."""
    return batch_key(build_spec(request, 0, loras, model))


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
    return queue_key(request, loras, model), model_key(model)


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
    key = queue_key(request, loras, model)
    queue.put(row["id"], row["work_units"], row["user_id"], key, model_key(model))
