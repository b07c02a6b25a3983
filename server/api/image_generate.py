"""POST /image/generate's image to image (server/contract_images.py): the body read and
checked, the init image and mask decoded off the event loop, the size settled, and the
image job (server/jobs/image_jobs.py) made only when admitting, as AUTOMATIC1111's img2img
does. A body without the new fields is the plain request it always was."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.api.image_input import ImageInputError, InputImage, read_base64, render_size
from server.contract import ApiError, ErrorCode, ImageGenerationRequest, parse
from server.contract_images import (
    ImageGenerateBody,
    ImageSettings,
    plain_payload,
)
from server.jobs import image_jobs
from server.state import AppState
from server.store.vault import Vault


@dataclass(frozen=True)
class ImageRequest:
    """A read body: the request that renders and, for image to image or a hires fix, how
    to make its image job (`job(vault)`: stores the inputs; call it only when admitting)."""

    request: ImageGenerationRequest
    job: Callable[[Vault], dict[str, Any]] | None = None


def invalid(field: str, message: str, status: int = 422) -> ApiError:
    return ApiError(
        ErrorCode.VALIDATION_ERROR,
        f"Invalid request: {field}: {message}",
        {"fields": {field: message}},
        status,
    )


async def read_request(state: AppState, payload: dict[str, Any]) -> ImageRequest:
    """The body as a request and its image job; every problem in the contract's errors."""
    body: ImageGenerateBody = parse(ImageGenerateBody, payload)
    settings = body.settings
    if body.mask is not None and body.init_image is None:
        raise invalid("mask", "a mask needs an init_image (the image it masks)")
    plain = plain_payload(payload)
    if body.init_image is None:
        request = parse(ImageGenerationRequest, plain)
        if settings.hires is None:
            return ImageRequest(request)
        hires = hires_part(request, settings)
        return ImageRequest(request, lambda vault: {"hires": hires})
    init = await _decode(state, "init_image", body.init_image)
    mask = await _decode(state, "mask", body.mask) if body.mask is not None else None
    given = plain.get("settings") if isinstance(plain.get("settings"), dict) else {}
    width, height = render_size(init.size)
    plain["settings"] = {"width": width, "height": height, **{
        k: v for k, v in given.items() if v is not None
    }}  # fmt: skip
    request = parse(ImageGenerationRequest, plain)
    hires = hires_part(request, settings) if settings.hires is not None else None

    def job(vault: Vault) -> dict[str, Any]:
        made = image_job(vault, settings, init, mask)
        return {**made, "hires": hires} if hires is not None else made

    return ImageRequest(request, job)


async def _decode(state: AppState, field: str, value: str) -> InputImage:
    try:
        return await read_base64(field, value, state.settings)
    except ImageInputError as exc:
        if exc.status == 413:
            raise ApiError(
                ErrorCode.LIMIT_EXCEEDED,
                str(exc),
                {"field": field, "limit_bytes": state.settings.max_image_bytes},
                413,
            ) from None
        raise invalid(field, exc.message, exc.status) from None


def hires_part(request: ImageGenerationRequest, settings: ImageSettings) -> dict[str, Any]:
    hires = settings.hires
    assert hires is not None
    base = request.settings
    try:
        return image_jobs.hires_job(
            base.width,
            base.height,
            scale=hires.scale,
            resize_x=hires.width or 0,
            resize_y=hires.height or 0,
            upscaler=hires.upscaler,
            steps=hires.steps,
            base_steps=base.steps,
            denoising_strength=hires.denoising_strength,
            sampler=hires.sampler,
            prompt=hires.prompt,
            negative_prompt=hires.negative_prompt,
        )
    except image_jobs.HiresTooLarge as exc:
        field = "settings.hires.width" if hires.width or hires.height else "settings.hires.scale"
        raise invalid(field, str(exc), 400) from None


def image_job(
    vault: Vault, settings: ImageSettings, init: InputImage, mask: InputImage | None
) -> dict[str, Any]:
    """Store the inputs in the vault and describe the job (server.jobs.image_jobs)."""
    return image_jobs.new_job(
        vault,
        (init.png, init.size),
        (mask.png, mask.size) if mask is not None else None,
        denoising_strength=settings.denoising_strength,
        resize_mode=settings.resize_mode,
        mask_blur=settings.mask_blur,
        inpainting_fill=settings.inpainting_fill,
        inpaint_full_res=settings.inpaint_full_res,
        inpaint_full_res_padding=settings.inpaint_full_res_padding,
        inpainting_mask_invert=settings.inpainting_mask_invert,
    )
