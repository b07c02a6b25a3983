"""POST /sdapi/v1/txt2img: an ordinary Darkroom generation (Admission.submit: the fair
queue, the 5-active limit, credits, history, vault, metrics) that the call waits for,
answered as AUTOMATIC1111 1.10 answers: `{images: [bare base64 PNG], parameters: the
request, info: "<JSON>"}`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipelines.samplers import UnsupportedSampler, resolve
from server.api.a1111 import checkpoints, models
from server.api.a1111.checkpoints import Checkpoint
from server.api.a1111.errors import Invalid, a1111_error, a1111_route, caller, json_object
from server.api.a1111.progress import Call, calls_of
from server.api.a1111.prompts import parse_tags
from server.api.offload import off_loop
from server.contract import MAX_SEED, ErrorCode, ImageGenerationRequest, parse
from server.jobs import infotext
from server.state import AppState, state_of
from server.store import options
from server.store.accounts import User

NATIVE_SIZE = 1024  # SDXL's; the tiny model is SDXL-shaped
WAIT_SECONDS = 0.05


async def chosen_checkpoint(state: AppState, user: User, override: Any = None) -> Checkpoint:
    """The checkpoint a call renders with: `override_settings.sd_model_checkpoint`, else
    the user's default (POST /options), else the server's model."""
    return await off_loop(_chosen_checkpoint, state, user, override)


def _chosen_checkpoint(state: AppState, user: User, override: Any) -> Checkpoint:
    listed = checkpoints.listed(state)
    if override:
        found = next((c for c in listed if c.matches(str(override))), None)
        if found is None:
            titles = ", ".join(c.title for c in listed)
            raise Invalid(
                ("override_settings.sd_model_checkpoint",
                 f"model {override!r} not found; available: {titles}")
            )  # fmt: skip
        return found
    chosen = options.get(state.store, user.id).get(options.DEFAULT_CHECKPOINT)
    return next((c for c in listed if chosen and c.matches(chosen)), listed[0])


@a1111_route
async def txt2img(request: Request) -> Response:
    state, user = state_of(request), await caller(request)
    if state.draining:
        return a1111_error(503, ErrorCode.SERVICE_UNAVAILABLE, "The server is shutting down")
    req = models.parse(await json_object(request))
    try:
        canonical = resolve(req.sampler, req.scheduler)
    except UnsupportedSampler as exc:
        raise Invalid(("sampler_name", str(exc))) from None
    checkpoint = await chosen_checkpoint(
        state, user, req.override_settings.get("sd_model_checkpoint")
    )
    tags = await off_loop(parse_tags, req.prompt, state.catalog)
    width, height = req.width or NATIVE_SIZE, req.height or NATIVE_SIZE
    generation = parse(
        ImageGenerationRequest,
        {
            "prompt": tags.text,
            "settings": {
                "cfg_scale": req.cfg_scale,
                "steps": req.steps,
                "sampler": canonical,
                "seed": req.seed,
                "width": width,
                "height": height,
                "negative_prompt": req.negative_prompt,
                "model": checkpoint.setting(),
            },
            "loras": [{"id": m.lora_id, "weight": m.weight} for m in tags.loras],
            "options": {"num_images": req.num_images, "format": "png"},
        },
    )
    sampler, schedule = infotext.display_sampler(canonical)
    notes = {"Lora not found": ", ".join(tags.not_found)} if tags.not_found else {}
    lora_hashes = [[m.name, m.sha256] for m in tags.loras if m.weight != 0]
    kept = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "sampler": sampler,
        "schedule": schedule,
        "lora_hashes": lora_hashes,
        "notes": notes,
        "checkpoint": checkpoint.title,
    }
    row = await off_loop(state.admission.submit, generation, user, {"a1111": kept})
    request.state.request_id = row["request_id"]
    call = Call(row["id"], user.id)
    calls_of(request).add(call)
    try:
        while row["status"] not in ("completed", "failed"):
            await asyncio.sleep(WAIT_SECONDS)
            row = await off_loop(state.store.generation_by_id, call.generation_id) or row
    finally:
        calls_of(request).remove(call)
    if row["status"] == "failed":
        error = json.loads(row["error_json"] or "{}")
        if error.get("code") != ErrorCode.CANCELLED:
            return a1111_error(500, error.get("code", "Error"), error.get("message", ""))
    pngs = await off_loop(_read_images, state, row)
    n = req.num_images
    subseed = req.subseed if req.subseed != -1 else secrets.randbelow(MAX_SEED + 1)
    info = {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * n,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * n,
        "seed": row["seed"],
        "all_seeds": [(row["seed"] + i) % (MAX_SEED + 1) for i in range(n)],
        "subseed": subseed,
        "all_subseeds": [(subseed + i) % (MAX_SEED + 1) for i in range(n)],
        "subseed_strength": req.subseed_strength,
        "width": width,
        "height": height,
        "sampler_name": sampler,
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": checkpoint.model_name,
        "sd_model_hash": checkpoint.hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": req.denoising_strength,
        "extra_generation_params": {
            "Schedule type": schedule,
            **infotext.extra_params([tuple(p) for p in lora_hashes], notes),
        },
        "index_of_first_image": 0,
        "infotexts": [text for _, text in pngs],
        "styles": [],
        "job_timestamp": call.timestamp,
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": infotext.VERSION,
        "request_id": row["request_id"],
    }
    parameters = {**req.model_dump(mode="json"), "width": width, "height": height}
    images = [data for data, _ in pngs] if req.send_images else []
    return JSONResponse({"images": images, "parameters": parameters, "info": json.dumps(info)})


def _read_images(state: AppState, row: dict[str, Any]) -> list[tuple[str, str]]:
    """(bare base64 PNG, its infotext) of each image of a completed generation."""
    found = []
    for image in state.store.images_of([row["id"]])[row["id"]]:
        data = state.vault.path(image["file_name"]).read_bytes()
        text = Image.open(io.BytesIO(data)).text.get("parameters", "")  # type: ignore[attr-defined]
        found.append((base64.b64encode(data).decode("ascii"), text))
    return found
