"""POST /sdapi/v1/img2img: AUTOMATIC1111 1.10's img2img and inpainting as a Darkroom
generation (txt2img.generate: queue, limits, credits, history, infotext). The init image
and mask are decoded off the event loop (server.api.image_input), kept in the vault once
per content, and named in the stored request; the render process reads them from there."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.api.a1111 import models
from server.api.a1111.errors import Invalid, a1111_error, a1111_route, json_object
from server.api.a1111.txt2img import generate, latent_size
from server.api.image_input import (
    ImageInputError,
    InputImage,
    body_limit,
    read_base64,
    render_size,
)
from server.api.offload import off_loop
from server.contract import ErrorCode
from server.jobs import image_jobs
from server.state import AppState, state_of


@a1111_route
async def img2img(request: Request) -> Response:
    state = state_of(request)
    if state.draining:
        return a1111_error(503, ErrorCode.SERVICE_UNAVAILABLE, "The server is shutting down")
    data = await json_object(request, body_limit(state.settings, images=2))
    req = models.parse(data, models.Img2ImgRequest)
    assert isinstance(req, models.Img2ImgRequest)
    try:
        init = await read_base64("init_images.0", req.init_images[0], state.settings)
        mask = await read_base64("mask", req.mask, state.settings) if req.mask else None
    except ImageInputError as exc:
        if exc.status == 422:
            raise Invalid((exc.field, exc.message)) from None
        return a1111_error(exc.status, ErrorCode.VALIDATION_ERROR, str(exc))
    width, height = req.width, req.height
    if not width or not height:
        width, height = render_size(init.size)
    width, height = latent_size(width), latent_size(height)

    async def job() -> dict[str, Any]:  # the inputs go to the vault only when admitting
        return await off_loop(image_job, state, req, init, mask)

    return await generate(request, "sdapi/v1/img2img", data, req, (width, height), job)


def image_job(
    state: AppState, req: models.Img2ImgRequest, init: InputImage, mask: InputImage | None
) -> dict[str, Any]:
    """Store the inputs in the vault and describe the job (server.jobs.image_jobs)."""
    blur = req.mask_blur if req.mask_blur is not None else req.mask_blur_x
    return image_jobs.new_job(
        state.vault,
        (init.png, init.size),
        (mask.png, mask.size) if mask is not None else None,
        denoising_strength=req.denoising_strength,
        resize_mode=req.resize_mode,
        mask_blur=blur,
        inpainting_fill=req.inpainting_fill,
        inpaint_full_res=req.inpaint_full_res,
        inpaint_full_res_padding=req.inpaint_full_res_padding,
        inpainting_mask_invert=bool(req.inpainting_mask_invert),
    )
