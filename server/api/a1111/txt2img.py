"""POST /sdapi/v1/txt2img: an ordinary Darkroom generation (Admission.submit: the fair
queue, the 5-active limit, credits, history, vault, metrics) that the call waits for,
answered as AUTOMATIC1111 1.10 answers: `{images: [bare base64 PNG], parameters: the
request, info: "<JSON>"}`."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipelines.samplers import UnsupportedSampler, resolve
from server.api.a1111 import checkpoints, models
from server.api.a1111.checkpoints import Checkpoint
from server.api.a1111.errors import Invalid, a1111_error, a1111_route, caller, json_object
from server.api.a1111.progress import Call, calls_of
from server.api.a1111.prompts import parse_tags
from server.api.idempotency import HEADER, Keyed, conflict, idempotent, key_of
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


@dataclass(frozen=True)
class Prepared:
    """A txt2img body read: the AUTOMATIC1111 request, the Darkroom request it renders as,
    and what its answer needs."""

    req: models.Txt2ImgRequest
    generation: ImageGenerationRequest
    checkpoint: Checkpoint
    kept: dict[str, Any]


@a1111_route
async def txt2img(request: Request) -> Response:
    state, user = state_of(request), caller(request)
    if state.draining:
        return a1111_error(503, ErrorCode.SERVICE_UNAVAILABLE, "The server is shutting down")
    payload = await json_object(request)

    async def run(keyed: Keyed | None) -> Response:
        prepared = await _prepare(state, user, payload)
        # What would differ between two answers for one generation is kept with it, so a
        # repeat under the same Idempotency-Key is answered alike.
        subseed = prepared.req.subseed
        kept = {
            **prepared.kept,
            "subseed": subseed if subseed != -1 else secrets.randbelow(MAX_SEED + 1),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        }
        row = await run_in_threadpool(
            functools.partial(
                state.admission.submit,
                prepared.generation,
                user,
                {"a1111": kept},
                bind=keyed.bind if keyed else None,
            )
        )
        return await _answer(request, prepared, row)

    async def replay(row: dict[str, Any], first: tuple[int, Any] | None) -> Response:
        if row["status"] not in ("completed", "failed"):
            raise conflict(f"The call with {HEADER} {key_of(request)!r} is still rendering")
        return await _answer(request, await _prepare(state, user, payload), row)

    # Answers hold every image: rebuilt from the generation rather than stored.
    return await idempotent(request, user, "sdapi/v1/txt2img", payload, run, replay, False)


async def _prepare(state: AppState, user: User, payload: dict[str, Any]) -> Prepared:
    req = models.parse(payload)
    try:
        canonical = resolve(req.sampler, req.scheduler)
    except UnsupportedSampler as exc:
        raise Invalid(("sampler_name", str(exc))) from None
    checkpoint = await chosen_checkpoint(
        state, user, req.override_settings.get("sd_model_checkpoint")
    )
    tags = await run_in_threadpool(parse_tags, req.prompt, state.catalog)
    generation = parse(
        ImageGenerationRequest,
        {
            "prompt": tags.text,
            "settings": {
                "cfg_scale": req.cfg_scale,
                "steps": req.steps,
                "sampler": canonical,
                "seed": req.seed,
                "width": req.width or NATIVE_SIZE,
                "height": req.height or NATIVE_SIZE,
                "negative_prompt": req.negative_prompt,
                "model": checkpoint.setting(),
            },
            "loras": [{"id": m.lora_id, "weight": m.weight} for m in tags.loras],
            "options": {"num_images": req.num_images, "format": "png"},
        },
    )
    sampler, schedule = infotext.display_sampler(canonical)
    kept = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "sampler": sampler,
        "schedule": schedule,
        "lora_hashes": [[m.name, m.sha256] for m in tags.loras if m.weight != 0],
        "notes": {"Lora not found": ", ".join(tags.not_found)} if tags.not_found else {},
        "checkpoint": checkpoint.title,
    }
    return Prepared(req, generation, checkpoint, kept)


async def _answer(request: Request, prepared: Prepared, row: dict[str, Any]) -> Response:
    """Wait for the call's generation to end; answer as AUTOMATIC1111 does."""
    state = state_of(request)
    request.state.request_id = row["request_id"]
    call = Call(row["id"], row["user_id"])
    calls_of(request).add(call)
    try:
        while row["status"] not in ("completed", "failed"):
            await asyncio.sleep(WAIT_SECONDS)
            row = state.store.generation_by_id(call.generation_id) or row
    finally:
        calls_of(request).remove(call)
    if row["status"] == "failed":
        error = json.loads(row["error_json"] or "{}")
        if error.get("code") != ErrorCode.CANCELLED:
            return a1111_error(500, error.get("code", "Error"), error.get("message", ""))
    pngs = await run_in_threadpool(_read_images, state, row)
    req, n = prepared.req, prepared.req.num_images
    kept = json.loads(row["request_json"]).get("a1111") or {}
    width, height = prepared.generation.settings.width, prepared.generation.settings.height
    subseed = kept.get("subseed", req.subseed)
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
        "sampler_name": kept["sampler"],
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": prepared.checkpoint.model_name,
        "sd_model_hash": prepared.checkpoint.hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": req.denoising_strength,
        "extra_generation_params": {
            "Schedule type": kept["schedule"],
            **infotext.extra_params([tuple(p) for p in kept["lora_hashes"]], kept["notes"]),
        },
        "index_of_first_image": 0,
        "infotexts": [text for _, text in pngs],
        "styles": [],
        "job_timestamp": kept.get("job_timestamp", call.timestamp),
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
