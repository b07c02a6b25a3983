"""POST /sdapi/v1/txt2img, hires fix included (img2img.py shares `generate`): an ordinary
Darkroom generation (Admission.submit: the fair queue, the 5-active limit, credits,
history, vault, metrics) that the call waits for, answered as AUTOMATIC1111 1.10 answers:
`{images: [bare base64 PNG], parameters: the request, info: "<JSON>"}`. Once per
Idempotency-Key."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from server.api.blocking import CallerGone, wait_for
from server.api.idempotency import HEADER, Keyed, conflict, idempotent, key_of
from server.api.offload import off_loop
from server.contract import (
    ANY_STEPS,
    MAX_SEED,
    ApiError,
    ErrorCode,
    ImageGenerationRequest,
    parse,
)
from server.jobs import image_jobs, infotext
from server.state import AppState, state_of
from server.store import options
from server.store.accounts import User

NATIVE_SIZE = 1024  # SDXL's; the tiny model is SDXL-shaped
# An img2img's part of the job (its inputs stored in the vault), made only when admitting.
ImageJob = Callable[[], Awaitable[dict[str, Any] | None]]
SLOT_POLL_SECONDS = 0.25  # how often a call over its user's active limit retries admission


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
    if state_of(request).draining:
        return a1111_error(503, ErrorCode.SERVICE_UNAVAILABLE, "The server is shutting down")
    payload = await json_object(request)
    req = models.parse(payload)
    width, height = latent_size(req.width), latent_size(req.height)
    job = {"hires": hires_job(req, width, height)} if req.enable_hr else None

    async def image_job() -> dict[str, Any] | None:
        return job

    return await generate(request, "sdapi/v1/txt2img", payload, req, (width, height), image_job)


def _sampler(field: str, sampler: str, scheduler: str | None) -> str:
    try:
        return resolve(sampler, scheduler)
    except UnsupportedSampler as exc:
        raise Invalid((field, str(exc))) from None


def hires_job(req: models.Txt2ImgRequest, width: int, height: int) -> dict[str, Any]:
    """The stored hires fix of a txt2img (server.jobs.image_jobs.hires_job)."""
    sampler = None
    same = (None, "", "Use same sampler")
    schedule = None if req.hr_scheduler in (None, "", "Use same scheduler") else req.hr_scheduler
    if req.hr_sampler_name not in same or schedule is not None:
        name = req.sampler if req.hr_sampler_name in same else str(req.hr_sampler_name)
        sampler = _sampler("hr_sampler_name", name, schedule or req.scheduler)
    try:
        return image_jobs.hires_job(
            width,
            height,
            scale=req.hr_scale,
            resize_x=req.hr_resize_x,
            resize_y=req.hr_resize_y,
            upscaler=req.hr_upscaler,
            steps=req.hr_second_pass_steps,
            base_steps=req.steps,
            denoising_strength=req.denoising_strength,
            sampler=sampler,
            prompt=req.hr_prompt,
            negative_prompt=req.hr_negative_prompt,
        )
    except image_jobs.HiresTooLarge as exc:
        raise Invalid(("hr_scale", str(exc))) from None


async def generate(
    request: Request,
    route: str,
    payload: dict[str, Any],
    req: models.Txt2ImgRequest,
    size: tuple[int, int],
    image_job: ImageJob,
) -> Response:
    """Submit an A1111 call as a Darkroom generation (once per Idempotency-Key), wait for
    it, answer as A1111 does."""
    state, user = state_of(request), await caller(request)

    async def run(keyed: Keyed | None) -> Response:
        prepared = await _prepare(state, user, req, size)
        job = await image_job()
        # What would differ between two answers for one generation is kept with it, so a
        # repeat under the same Idempotency-Key is answered alike.
        subseed = prepared.req.subseed
        kept = {
            **prepared.kept,
            "subseed": subseed if subseed != -1 else secrets.randbelow(MAX_SEED + 1),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        }
        admit = functools.partial(
            state.admission.submit,
            prepared.generation,
            user,
            {"a1111": kept},
            bind=keyed.bind if keyed else None,
            image_job=job,
            blocking=True,
        )
        return await _answer(request, prepared, await admit_when_free(request, state, admit))

    async def replay(row: dict[str, Any], first: tuple[int, Any] | None) -> Response:
        if row["status"] not in ("completed", "failed"):
            raise conflict(f"The call with {HEADER} {key_of(request)!r} is still rendering")
        return await _answer(request, await _prepare(state, user, req, size), row)

    # Answers hold every image: rebuilt from the generation rather than stored.
    return await idempotent(request, user, route, payload, run, replay, False)


async def _prepare(
    state: AppState, user: User, req: models.Txt2ImgRequest, size: tuple[int, int]
) -> Prepared:
    canonical = _sampler("sampler_name", req.sampler, req.scheduler)
    override = req.override_settings.get("sd_model_checkpoint")
    checkpoint = await chosen_checkpoint(state, user, override)
    refusal = checkpoint.entry.refusal(masked=bool(getattr(req, "mask", None)))
    if refusal is not None:  # named per call, or the user's default (POST /options)
        where = "override_settings.sd_model_checkpoint" if override else "sd_model_checkpoint"
        raise Invalid((where, refusal))
    tags = await off_loop(parse_tags, req.prompt, state.catalog)
    generation = parse(
        ImageGenerationRequest,
        {
            "prompt": tags.text,
            "settings": {
                "cfg_scale": req.cfg_scale,
                "steps": req.steps,
                "sampler": canonical,
                "seed": req.seed,
                "width": size[0],
                "height": size[1],
                "negative_prompt": req.negative_prompt,
                "model": checkpoint.setting(),
            },
            "loras": [{"id": m.lora_id, "weight": m.weight} for m in tags.loras],
            "options": {"num_images": req.num_images, "format": "png"},
        },
        ANY_STEPS,  # AUTOMATIC1111's range: Turbo and Lightning models take 4-8 steps
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
        row = await wait_for(request, state, call.generation_id)
    except CallerGone:
        return Response(status_code=499)  # nobody reads it: the generation was cancelled
    finally:
        calls_of(request).remove(call)
    if row["status"] == "failed":
        error = json.loads(row["error_json"] or "{}")
        if error.get("code") != ErrorCode.CANCELLED:
            return a1111_error(500, error.get("code", "Error"), error.get("message", ""))
    pngs = await off_loop(_read_images, state, row)
    req, n = prepared.req, prepared.req.num_images
    stored = json.loads(row["request_json"])
    kept = stored.get("a1111") or {}
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
            **infotext.image_params(stored.get(image_jobs.KEY)),
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
    if not parameters.pop("include_init_images", True):  # A1111 leaves them out by default
        parameters.update(init_images=None, mask=None)
    images = [data for data, _ in pngs] if req.send_images else []
    return JSONResponse({"images": images, "parameters": parameters, "info": json.dumps(info)})


async def admit_when_free(
    request: Request, state: AppState, submit: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Admit a blocking call. Over its user's active limit it waits for a slot, as
    AUTOMATIC1111 queues its calls, up to --a1111-wait seconds, then answers the 429; it
    stops waiting when the caller hangs up. Every other refusal (credits, a full queue:
    --max-queued's 503) is answered at once."""
    deadline = time.monotonic() + state.settings.a1111_wait
    while True:
        try:
            return await off_loop(submit)
        except ApiError as exc:
            over_limit = exc.http_status == 429 and exc.code == ErrorCode.LIMIT_EXCEEDED
            if not over_limit or time.monotonic() >= deadline or await request.is_disconnected():
                raise
        await asyncio.sleep(SLOT_POLL_SECONDS)


def latent_size(side: int | None) -> int:
    """A side as AUTOMATIC1111 renders it: its latent is side // 8, so the image is rounded
    down to a multiple of 8 (0 stays 0, which the size range refuses)."""
    return NATIVE_SIZE if side is None else side - side % 8


def _read_images(state: AppState, row: dict[str, Any]) -> list[tuple[str, str]]:
    """(bare base64 PNG, its infotext) of each image of a completed generation."""
    found = []
    for image in state.store.images_of([row["id"]])[row["id"]]:
        data = state.vault.path(image["file_name"]).read_bytes()
        text = Image.open(io.BytesIO(data)).text.get("parameters", "")  # type: ignore[attr-defined]
        found.append((base64.b64encode(data).decode("ascii"), text))
    return found
