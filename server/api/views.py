"""Database rows -> contract JSON, with the absolute URLs a client follows."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from server.contract import (
    PROVIDER_NAME,
    ErrorInfo,
    ImageGenerationResponse,
    ImageInfo,
    ImageMetadata,
    LoraModel,
)
from server.jobs import image_jobs
from server.jobs.admission import Admission
from server.jobs.queue import JobQueue
from server.library.checkpoints import ModelEntry
from server.library.loras import file_size_mb
from server.store.vault import EXTENSIONS, Vault


@dataclass(frozen=True)
class Links:
    """Builds absolute URLs under the base a request arrived on (root or contract prefix)."""

    base: str
    vault: Vault
    ttl_seconds: float

    def status(self, request_id: str) -> str:
        return f"{self.base}/generations/{request_id}/status"

    def permanent(self, name: str) -> str:
        return f"{self.base}/vault/{name}"

    def signed(self, name: str, expires: int) -> str:
        return f"{self.base}/files/{name}?expires={expires}&sig={self.vault.sign(name, expires)}"

    def generation_input(self, request_id: str, field: str) -> str:
        return f"{self.base}/generations/{request_id}/inputs/{field}"

    def lora_thumbnail(self, lora_id: int) -> str:
        return f"{self.base}/loras/{lora_id}/thumbnail"


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def image_info(
    image: dict[str, Any], request: dict[str, Any], links: Links, provider: str = PROVIDER_NAME
) -> ImageInfo:
    name = f"{image['token']}.{EXTENSIONS[image['format']]}"
    thumb = f"{image['token']}.thumb.webp"
    if image["in_vault"]:
        # A fresh link on every poll, stable within the hour, valid for at least the TTL.
        expires = math.ceil((time.time() + links.ttl_seconds) / 3600) * 3600
        vault_url, thumbnail_url = links.permanent(name), links.permanent(thumb)
    else:
        # Temporary files are purged when their TTL ends, so links must not outlive them.
        expires = math.floor(image["created_at"] + links.ttl_seconds)
        vault_url, thumbnail_url = None, links.signed(thumb, expires)
    settings = request["settings"]
    return ImageInfo(
        url=links.signed(name, expires),
        vault_url=vault_url,
        thumbnail_url=thumbnail_url,
        metadata=ImageMetadata(
            seed=image["seed"],
            width=image["width"],
            height=image["height"],
            generation_time=image["generation_time_ms"],
            provider=provider,
            format=image["format"],
            sampler=settings["sampler"],
            steps=settings["steps"],
            cfg_scale=settings["cfg_scale"],
            model=image.get("model"),
            model_hash=image.get("model_hash"),
        ),
    )


def generation(
    row: dict[str, Any],
    images: list[dict[str, Any]],
    links: Links,
    queue: JobQueue,
    admission: Admission,
) -> dict[str, Any]:
    """The contract's ImageGenerationResponse, plus additive progress fields."""
    status = row["status"]
    fields: dict[str, Any] = {
        "request_id": row["request_id"],
        "status": status,
        "credits_used": row["credits_used"],
        "generation_id": row["id"],
    }
    extra: dict[str, Any] = {}
    request = json.loads(row["request_json"])
    pixels = request["settings"]["width"] * request["settings"]["height"]
    router = getattr(admission, "router", None)
    remote = router.progress_of(row["id"]) if router is not None else None
    if remote is not None and status in ("pending", "processing"):
        # A remote job: its place in the remote's queue, its steps as the remote reports.
        total = remote.total_steps or request["settings"]["steps"]
        done = remote.step / total if status == "processing" else 0.0
        fields["poll_url"] = links.status(row["request_id"])
        fields["estimated_time"] = round(
            admission.estimate_seconds(row["work_units"] * (1 - done), pixels), 2
        )
        if status == "pending":
            extra["queue_position"] = remote.queue_position
        else:
            extra.update(progress=round(done, 4), step=remote.step, total_steps=total)
    elif status == "pending":
        place = queue.position(row["id"])
        if place is None:  # just taken by the worker, or not queued yet
            ahead = 0.0 if queue.progress_of(row["id"]) else queue.work_ahead_of_new_job()
        else:
            ahead = place[1]
        fields["poll_url"] = links.status(row["request_id"])
        own = admission.estimate_seconds(row["work_units"], pixels)
        fields["estimated_time"] = round(admission.estimate_seconds(ahead) + own, 2)
        extra["queue_position"] = place[0] if place else None
    elif status == "processing":
        job = queue.progress_of(row["id"])
        step, total = (job.step, job.total_steps) if job else (0, request["settings"]["steps"])
        if job is not None and job.preview is not None:
            extra["preview"] = job.preview
            extra["preview_step"] = job.preview_step
        done = step / total if total else 0.0
        fields["poll_url"] = links.status(row["request_id"])
        fields["estimated_time"] = round(
            admission.estimate_seconds(row["work_units"] * (1 - done), pixels), 2
        )
        extra.update(progress=round(done, 4), step=step, total_steps=total)
    elif status == "completed":
        provider = row.get("provider") or PROVIDER_NAME
        fields["images"] = [image_info(image, request, links, provider) for image in images]
    else:
        fields["error"] = ErrorInfo(**json.loads(row["error_json"] or "{}"))
    body = ImageGenerationResponse(**fields).model_dump(mode="json", exclude_unset=True)
    return {**body, **extra}


def generation_inputs(row: dict[str, Any], links: Links) -> dict[str, Any] | None:
    """An image-to-image's init image and mask (SHA-256, size, link); None for others."""
    inputs = image_jobs.inputs_of(json.loads(row["request_json"]))
    if not inputs:
        return None
    return {
        field: {"sha256": item["sha256"], "width": item["width"], "height": item["height"],
                "url": links.generation_input(row["request_id"], field)}
        for field, item in inputs.items()
    }  # fmt: skip


def history_item(
    row: dict[str, Any],
    images: list[dict[str, Any]],
    links: Links,
    queue: JobQueue,
    admission: Admission,
) -> dict[str, Any]:
    request = json.loads(row["request_json"])
    return {
        **generation(row, images, links, queue, admission),
        "prompt": row["prompt"],
        "settings": {**request["settings"], "seed": row["seed"]},
        "loras": request["loras"],
        "options": request["options"],
        "has_seed": bool(row["seed_fixed"]),
        "created_at": iso(row["created_at"]),
        "completed_at": iso(row["finished_at"]),
    }


def lora_model(row: dict[str, Any], links: Links) -> dict[str, Any]:
    """The contract's LoRAModel, plus what a user picking a LoRA wants to know: its trigger
    words, weight, base model, file, and whether (or why not) it fits the loaded model."""
    meta = row["meta"]
    thumbnail = meta["thumbnail_url"] or (
        links.lora_thumbnail(row["id"]) if meta["has_preview"] else None
    )
    usage = row["usage_count"]
    model = LoraModel(
        id=row["id"],
        name=meta["name"],
        file_size_mb=file_size_mb(row["file_size"]),
        type=meta["type"],
        personality=meta["personality"],
        url=meta["url"],
        description=meta["description"],
        tags=meta["tags"],
        thumbnail_url=thumbnail,
        usage_count=usage,
        avg_weight=round(row["weight_sum"] / usage, 4) if usage else 0.0,
    )
    return {
        **model.model_dump(mode="json"),
        "activation_text": meta.get("activation_text", ""),
        "preferred_weight": meta.get("preferred_weight"),
        "notes": meta.get("notes", ""),
        "base_model": meta.get("base_model"),
        "rank": meta.get("rank"),
        "alpha": meta.get("alpha"),
        "format": meta.get("format"),
        "file": row["path"],
        "duplicates": meta.get("duplicates", []),
        "compatible": row["compatible"],
        "incompatible_reason": row["reason"],
        "warnings": meta.get("warnings", []),
    }


def preset(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "settings": json.loads(row["settings_json"]),
        "loras": json.loads(row["loras_json"]),
        "tags": json.loads(row["tags_json"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def model_entry(entry: ModelEntry, loaded: set[str | None]) -> dict[str, Any]:
    """A checkpoint as GET /models lists it."""
    key = None if entry.default else entry.sha256
    return {
        "id": entry.id,
        "name": entry.name,
        "title": entry.title,
        "hash": entry.hash,
        "sha256": entry.sha256,
        "format": entry.format,
        "base_model": entry.base_model,
        "file_size_mb": file_size_mb(entry.file_size),
        "default": entry.default,
        "loaded": key in loaded,
        "compatible": entry.compatible,
        "incompatible_reason": entry.reason,
        "inpainting": entry.inpainting,
        "duplicates": list(entry.duplicates),
    }
