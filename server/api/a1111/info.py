"""AUTOMATIC1111's read-mostly routes: options, models, samplers, schedulers, LoRAs, the
honest empty lists (upscalers, VAEs, embeddings, scripts), flags, memory, png-info, ping."""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct

from PIL import Image, UnidentifiedImageError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipelines.samplers import a1111_samplers, a1111_schedulers
from pipelines.spec import IMAGE_UPSCALERS, LATENT_UPSCALERS
from server.api.a1111 import checkpoints
from server.api.a1111.errors import Invalid, a1111_route, caller, json_object
from server.api.a1111.prompts import lora_entries
from server.api.a1111.txt2img import chosen_checkpoint
from server.api.offload import off_loop
from server.jobs import infotext
from server.library.layout import checkpoint_dir, lora_dir
from server.state import state_of
from server.store import options

PNG_INFO_MAX_BYTES = 64 * 1024 * 1024
# 8192x8192: far beyond any render (AUTOMATIC1111's hires fix included), and below PIL's
# own decompression-bomb warning (89 million pixels).
PNG_INFO_MAX_PIXELS = 8192 * 8192
PNG_INFO_MAX_TEXT = 64 * 1024  # an infotext's characters (prompts are at most 2000)


@a1111_route
async def get_options(request: Request) -> Response:
    state, user = state_of(request), await caller(request)
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
    state, user = state_of(request), await caller(request)
    body = await json_object(request)
    name = body.get("sd_model_checkpoint")
    if name is not None:
        listed = await off_loop(checkpoints.listed, state)
        found = next((c for c in listed if c.matches(str(name))), None)
        if found is None:
            titles = ", ".join(c.title for c in listed)
            raise Invalid(("sd_model_checkpoint", f"model {name!r} not found; available: {titles}"))
        await off_loop(options.put, state.store, user.id, {options.DEFAULT_CHECKPOINT: found.title})
    return JSONResponse(None)


@a1111_route
async def sd_models(request: Request) -> Response:
    state = state_of(request)
    await caller(request)
    listed = await off_loop(checkpoints.listed, state)
    return JSONResponse([c.as_json() for c in listed])


@a1111_route
async def samplers(request: Request) -> Response:
    await caller(request)
    return JSONResponse(a1111_samplers())


@a1111_route
async def schedulers(request: Request) -> Response:
    await caller(request)
    return JSONResponse(a1111_schedulers())


@a1111_route
async def loras(request: Request) -> Response:
    state = state_of(request)
    await caller(request)
    entries = await off_loop(lora_entries, state.catalog)
    return JSONResponse([{k: v for k, v in e.items() if k != "row"} for e in entries])


@a1111_route
async def refresh_loras(request: Request) -> Response:
    state = state_of(request)
    await caller(request)
    await off_loop(state.catalog.refresh)
    return JSONResponse(None)


@a1111_route
async def refresh_checkpoints(request: Request) -> Response:
    state = state_of(request)
    await caller(request)
    await off_loop(state.models.refresh)
    return JSONResponse(None)


@a1111_route
async def empty_list(request: Request) -> Response:
    """/sd-vae: Darkroom has none."""
    await caller(request)
    return JSONResponse([])


@a1111_route
async def upscalers(request: Request) -> Response:
    """The image upscalers the hires fix runs (A1111 lists latent modes separately)."""
    await caller(request)
    return JSONResponse(
        [{"name": name, "model_name": None, "model_path": None, "model_url": None,
          "scale": 4.0} for name in IMAGE_UPSCALERS]
    )  # fmt: skip


@a1111_route
async def latent_upscale_modes(request: Request) -> Response:
    await caller(request)
    return JSONResponse([{"name": name} for name in LATENT_UPSCALERS])


@a1111_route
async def embeddings(request: Request) -> Response:
    await caller(request)
    return JSONResponse({"loaded": {}, "skipped": {}})


@a1111_route
async def scripts(request: Request) -> Response:
    await caller(request)
    return JSONResponse({"txt2img": [], "img2img": []})


@a1111_route
async def cmd_flags(request: Request) -> Response:
    state = state_of(request)
    await caller(request)
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
    await caller(request)
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
    await caller(request)
    body = await json_object(request, PNG_INFO_MAX_BYTES)
    encoded = body.get("image")
    if not isinstance(encoded, str):
        raise Invalid(("image", "Field required: a base64-encoded image"), kind="missing")
    if not encoded.strip():
        return JSONResponse({"info": "", "items": {}, "parameters": {}})
    # Decoding a large image takes a while: not on the event loop.
    return JSONResponse(await off_loop(read_png_info, encoded))


def read_png_info(encoded: str) -> dict:
    """png-info's answer for a base64 image (a data URL too): its text chunks, parsed.
    Only the header and the text before the pixels are read, and only for an image of at
    most PNG_INFO_MAX_PIXELS (a decompression bomb's header claims far more)."""
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        data = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise Invalid(("image", f"not base64: {exc}")) from None
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own bound is far above ours (a warning, an error under pytest).
        raise Invalid(("image", f"larger than {PNG_INFO_MAX_PIXELS} pixels")) from None
    except UnidentifiedImageError:
        raise Invalid(("image", "not an image PIL can read (PNG, JPEG, WebP...)")) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise Invalid(("image", f"damaged or cut short: {exc}")) from None
    width, height = image.size
    if width * height > PNG_INFO_MAX_PIXELS:
        raise Invalid(
            ("image", f"{width}x{height} is larger than {PNG_INFO_MAX_PIXELS} pixels")
        )
    text = image.info.get("parameters")
    geninfo = text if isinstance(text, str) else ""
    if len(geninfo) > PNG_INFO_MAX_TEXT:
        raise Invalid(("image", f"its parameters are over {PNG_INFO_MAX_TEXT} characters"))
    items = {
        key: value
        for key, value in image.info.items()
        if isinstance(value, str) and key != "parameters"
    }
    parameters = infotext.parse(geninfo) if geninfo else {}
    return {"info": geninfo, "items": items, "parameters": parameters}


async def ping(request: Request) -> Response:
    return JSONResponse({})
