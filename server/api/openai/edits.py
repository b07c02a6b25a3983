"""POST /v1/images/edits and /v1/images/variations: OpenAI's multipart image routes as
Darkroom image-to-image generations (server/jobs/image_jobs.py), answered like
generations (server/api/openai/images.py `render`).

An edit repaints where its mask is fully transparent, as OpenAI defines masks (without a
mask, an image's own transparent pixels are the mask; with none at all, the whole image
is reworked at `strength`). A variation is the image reworked with no prompt."""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from server.api.body import BodyProblem, read_body
from server.api.common import user_of
from server.api.image_input import (
    ImageInputError,
    InputImage,
    body_limit,
    decode,
    render_size,
)
from server.api.offload import off_loop
from server.api.openai.errors import OpenAIError, invalid, openai_route
from server.api.openai.images import render
from server.api.openai.params import ImageParams, read_params
from server.jobs import image_jobs
from server.state import AppState, state_of

MASKED_STRENGTH = 1.0  # a masked area is repainted
UNMASKED_STRENGTH = image_jobs.INIT_STRENGTH
VARIATION_STRENGTH = 0.6
MASK_BLUR = 4  # AUTOMATIC1111's default
NUMBERS = {"steps": int, "seed": int, "cfg_scale": float, "strength": float}


@openai_route
async def edits(request: Request) -> Response:
    state, user = state_of(request), await user_of(request)
    fields, files = await read_form(request, state)
    images = files.get("image") or files.get("image[]")
    if not images:
        raise invalid("image", "'image' is required: the image to edit, as a file")
    params = read_params(_typed(fields))
    params.event = "image_edit"
    mask = (files.get("mask") or [None])[0]
    job = await off_loop(_edit_job, state, params, images[0], mask)
    return await render(request, state, user, params, "v1/images/edits",
                        _fingerprint(fields, files), job)  # fmt: skip


@openai_route
async def variations(request: Request) -> Response:
    state, user = state_of(request), await user_of(request)
    fields, files = await read_form(request, state)
    images = files.get("image")
    if not images:
        raise invalid("image", "'image' is required: the image to vary, as a file")
    fields = {key: value for key, value in fields.items() if key != "prompt"}
    params = read_params(_typed(fields), prompt_required=False)
    params.extra.setdefault("strength", VARIATION_STRENGTH)
    job = await off_loop(_edit_job, state, params, images[0], None)
    return await render(request, state, user, params, "v1/images/variations",
                        _fingerprint(fields, files), job)  # fmt: skip


async def read_form(
    request: Request, state: AppState
) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """The multipart body's text fields and files, within the limit of a body carrying
    two images (an image and its mask) of at most DARKROOM_MAX_IMAGE_BYTES each."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid(None, "The body must be multipart/form-data (image, mask, prompt, ...)")
    try:
        request._body = await read_body(request, body_limit(state.settings, images=2))
    except BodyProblem as problem:
        raise OpenAIError(problem.status, str(problem), None, problem.kind) from None
    try:
        form = await request.form(max_files=4, max_fields=64)
    except Exception as exc:  # python-multipart's and Starlette's parse errors alike
        raise invalid(None, f"The body is not valid multipart/form-data: {exc}") from None
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(key, []).append(await value.read())
        else:
            fields[key] = value
    await form.close()
    return fields, files


def _typed(fields: dict[str, str]) -> dict[str, Any]:
    """Form fields are text: Darkroom's numeric extras and `loras` (JSON) as values."""
    typed: dict[str, Any] = dict(fields)
    for name, kind in NUMBERS.items():
        if name in typed:
            try:
                typed[name] = kind(typed[name])
            except ValueError:
                raise invalid(name, f"'{name}' must be a number, got {typed[name]!r}") from None
    if "loras" in typed:
        try:
            typed["loras"] = json.loads(typed["loras"])
        except ValueError:
            raise invalid("loras", "'loras' must be JSON: [{\"id\": 1, \"weight\": 0.8}]") from None
    return typed


def _fingerprint(fields: dict[str, str], files: dict[str, list[bytes]]) -> dict[str, Any]:
    """What makes two multipart requests the same, for Idempotency-Key."""
    digests = {key: [hashlib.sha256(data).hexdigest() for data in datas]
               for key, datas in files.items()}  # fmt: skip
    return {"fields": fields, "files": digests}


def _edit_job(
    state: AppState, params: ImageParams, image_data: bytes, mask_data: bytes | None
) -> dict[str, Any]:
    """Decode the image (and mask), settle the size, store both, describe the job."""
    settings = state.settings
    try:
        image = decode("image", image_data, settings.max_image_pixels)
        mask = decode("mask", mask_data, settings.max_image_pixels) if mask_data else None
    except ImageInputError as exc:
        raise OpenAIError(exc.status if exc.status != 422 else 400, exc.message, exc.field,
                          "invalid_image") from None  # fmt: skip
    repaint = _repaint_mask(image, mask)
    if params.size == "auto":
        params.width, params.height = render_size(image.size)
    strength = params.extra.get("strength")
    if strength is None:
        strength = MASKED_STRENGTH if repaint is not None else UNMASKED_STRENGTH
    if not 0.0 <= strength <= 1.0:
        raise invalid("strength", f"'strength' must be from 0 to 1, got {strength}")
    return image_jobs.new_job(
        state.vault,
        (image.png, image.size),
        repaint,
        denoising_strength=strength,
        resize_mode=0,
        mask_blur=MASK_BLUR,
        inpainting_fill=1,  # the original pixels under the mask, then denoised
        inpaint_full_res=False,
        inpaint_full_res_padding=0,
        inpainting_mask_invert=False,
    )


def _repaint_mask(
    image: InputImage, mask: InputImage | None
) -> tuple[bytes, tuple[int, int]] | None:
    """OpenAI's mask (fully transparent: repaint) as Darkroom's (white: repaint), PNG."""
    source, field = (mask, "mask") if mask is not None else (image, None)
    if source.image.mode not in ("RGBA", "LA"):
        if field is None:
            return None  # an opaque image and no mask: rework all of it
        raise invalid("mask", "The mask must be a PNG with an alpha channel (transparent: edit)")
    if mask is not None and mask.size != image.size:
        raise invalid(
            "mask",
            f"The mask ({mask.size[0]}x{mask.size[1]}) must be the size of the image"
            f" ({image.size[0]}x{image.size[1]})",
        )
    alpha = source.image.getchannel("A")
    repaint = alpha.point(lambda value: 255 if value == 0 else 0)
    if field is None and repaint.getbbox() is None:
        return None  # no transparent pixel: nothing marked
    buffer = BytesIO()
    repaint.convert("L").save(buffer, "PNG")
    return buffer.getvalue(), image.size
