"""AUTOMATIC1111's read-mostly routes: options, models, samplers, schedulers, LoRAs, the
honest empty lists (upscalers, VAEs, embeddings, scripts), flags, memory, png-info, ping."""

from __future__ import annotations

import base64
import binascii
import io
import os

from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipelines.samplers import a1111_samplers, a1111_schedulers
from server.api.a1111 import checkpoints
from server.api.a1111.errors import Invalid, a1111_route, caller, json_object
from server.api.a1111.prompts import lora_entries
from server.api.a1111.txt2img import chosen_checkpoint
from server.jobs import infotext
from server.library.layout import checkpoint_dir, lora_dir
from server.state import state_of
from server.store import options

PNG_INFO_MAX_BYTES = 64 * 1024 * 1024


@a1111_route
async def get_options(request: Request) -> Response:
    state, user = state_of(request), caller(request)
    checkpoint = await chosen_checkpoint(state, user)
    return JSONResponse(
        {
            "sd_model_checkpoint": checkpoint.title,
            "sd_checkpoint_hash": checkpoint.sha256,
            "sd_vae": "Automatic",
            "sd_lora": "None",
            "CLIP_stop_at_last_layers": 1,
            "samples_format": "png",
            "eta_ancestral": 1.0,
            "add_model_hash_to_info": True,
            "add_model_name_to_info": True,
            "lora_add_hashes_to_infotext": True,
        }
    )


@a1111_route
async def set_options(request: Request) -> Response:
    """The whole dict (Open WebUI) or a few keys (webuiapi, SillyTavern); only
    `sd_model_checkpoint` is kept (the user's default model), other keys are ignored."""
    state, user = state_of(request), caller(request)
    body = await json_object(request)
    name = body.get("sd_model_checkpoint")
    if name is not None:
        listed = checkpoints.listed(state)
        found = next((c for c in listed if c.matches(str(name))), None)
        if found is None:
            titles = ", ".join(c.title for c in listed)
            raise Invalid(("sd_model_checkpoint", f"model {name!r} not found; available: {titles}"))
        options.put(state.store, user.id, {options.DEFAULT_CHECKPOINT: found.title})
    return JSONResponse(None)


@a1111_route
async def sd_models(request: Request) -> Response:
    state = state_of(request)
    caller(request)
    listed = checkpoints.listed(state)
    return JSONResponse([c.as_json() for c in listed])


@a1111_route
async def samplers(request: Request) -> Response:
    caller(request)
    return JSONResponse(a1111_samplers())


@a1111_route
async def schedulers(request: Request) -> Response:
    caller(request)
    return JSONResponse(a1111_schedulers())


@a1111_route
async def loras(request: Request) -> Response:
    state = state_of(request)
    caller(request)
    entries = await run_in_threadpool(lora_entries, state.catalog)
    return JSONResponse([{k: v for k, v in e.items() if k != "row"} for e in entries])


@a1111_route
async def refresh_loras(request: Request) -> Response:
    state = state_of(request)
    caller(request)
    await run_in_threadpool(state.catalog.refresh)
    return JSONResponse(None)


@a1111_route
async def refresh_checkpoints(request: Request) -> Response:
    state = state_of(request)
    caller(request)
    await run_in_threadpool(state.models.refresh)
    return JSONResponse(None)


def _empty_list(request: Request) -> Response:
    caller(request)
    return JSONResponse([])


@a1111_route
async def empty_list(request: Request) -> Response:
    """/upscalers, /latent-upscale-modes, /sd-vae: Darkroom has none of them."""
    return _empty_list(request)


@a1111_route
async def embeddings(request: Request) -> Response:
    caller(request)
    return JSONResponse({"loaded": {}, "skipped": {}})


@a1111_route
async def scripts(request: Request) -> Response:
    caller(request)
    return JSONResponse({"txt2img": [], "img2img": []})


@a1111_route
async def cmd_flags(request: Request) -> Response:
    state = state_of(request)
    caller(request)
    settings = state.settings
    return JSONResponse(
        {
            "api": True,
            "nowebui": True,
            "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
            "port": settings.port,
            "ckpt": state.models.default_model,
            "ckpt_dir": str(checkpoint_dir(settings.models_dir)),
            "lora_dir": str(lora_dir(settings.models_dir)),
            "data_dir": str(settings.data_dir),
            "device_id": None,
        }
    )


@a1111_route
async def memory(request: Request) -> Response:
    caller(request)
    ram: dict[str, object]
    try:
        page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
        free = page * os.sysconf("SC_AVPHYS_PAGES")
        ram = {"free": free, "used": page * pages - free, "total": page * pages}
    except (ValueError, OSError, AttributeError) as exc:
        ram = {"error": str(exc)}
    # The model lives in the render process; the server does not import torch.
    return JSONResponse({"ram": ram, "cuda": {"error": "not reported by Darkroom"}})


@a1111_route
async def png_info(request: Request) -> Response:
    caller(request)
    body = await json_object(request, PNG_INFO_MAX_BYTES)
    encoded = body.get("image")
    if not isinstance(encoded, str):
        raise Invalid(("image", "Field required: a base64-encoded image"), kind="missing")
    if not encoded.strip():
        return JSONResponse({"info": "", "items": {}, "parameters": {}})
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoded, validate=False)))
    except (binascii.Error, UnidentifiedImageError, ValueError) as exc:
        raise Invalid(("image", f"not a base64-encoded image: {exc}")) from None
    text = image.info.get("parameters")
    geninfo = text if isinstance(text, str) else ""
    items = {
        key: value
        for key, value in image.info.items()
        if isinstance(value, str) and key != "parameters"
    }
    parameters = infotext.parse(geninfo) if geninfo else {}
    return JSONResponse({"info": geninfo, "items": items, "parameters": parameters})


async def ping(request: Request) -> Response:
    return JSONResponse({})
