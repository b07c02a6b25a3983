"""The contract's image-to-image additions to POST /image/generate (additive: a request
without them parses and renders as before): a top-level `init_image` and `mask`, the
img2img / inpainting settings, and `settings.hires`, a hires fix (of either kind).

Routes validate a body with ImageGenerateBody, then render the plain
ImageGenerationRequest (contract.py) its other fields make, plus an image job
(server/jobs/image_jobs.py): the base64 images are never part of the stored request."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from pipelines.samplers import SAMPLER_NAMES, SAMPLER_SPELLINGS, canonical_sampler
from pipelines.spec import IMAGE_UPSCALERS, LATENT_UPSCALERS
from server.contract import (
    SIZE,
    GenerationSettings,
    ImageGenerationRequest,
    JsonInt,
    _Strict,
)
from server.jobs.image_jobs import HIRES_STRENGTH, INIT_STRENGTH, MAX_HIRES_SIZE

HIRES_UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)
IMAGE_FIELDS = ("init_image", "mask")
IMAGE_DESCRIPTION = "Bare base64 or a data:image/...;base64, URL"


class HiresSettings(_Strict):
    """A hires fix: render the base size (from text or, with `init_image`, from the image),
    upscale, denoise again."""

    scale: float = Field(2.0, ge=1.0, le=4.0, description="Target = base size x scale")
    width: JsonInt | None = Field(
        None, ge=256, le=MAX_HIRES_SIZE, json_schema_extra=SIZE,
        description="Explicit target width (one side alone keeps the aspect); wins over scale",
    )  # fmt: skip
    height: JsonInt | None = Field(
        None, ge=256, le=MAX_HIRES_SIZE, json_schema_extra=SIZE,
        description="Explicit target height",
    )  # fmt: skip
    upscaler: str = Field(
        "Latent",
        json_schema_extra={"enum": list(HIRES_UPSCALERS)},
        description="AUTOMATIC1111's hr_upscaler names",
    )
    steps: JsonInt = Field(0, ge=0, le=150, description="Second-pass steps; 0: settings.steps")
    denoising_strength: float = Field(HIRES_STRENGTH, ge=0.0, le=1.0)
    sampler: str | None = Field(
        None,
        json_schema_extra={"enum": list(SAMPLER_SPELLINGS)},
        description="Second-pass sampler; absent: settings.sampler",
    )
    prompt: str | None = Field(None, description="Second-pass prompt; absent: the prompt")
    negative_prompt: str | None = None

    @field_validator("upscaler")
    @classmethod
    def _known_upscaler(cls, value: str) -> str:
        if value not in HIRES_UPSCALERS:
            raise ValueError(
                f"upscaler {value!r} not available; available: {', '.join(HIRES_UPSCALERS)}"
            )
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        name = canonical_sampler(value) if value is not None else None
        if value is not None and name is None:
            raise ValueError(
                f"unknown sampler {value!r}; valid samplers: {', '.join(SAMPLER_NAMES)}"
            )
        return name

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value


class ImageSettings(GenerationSettings):
    """GenerationSettings plus image to image's (used only with `init_image`) and `hires`."""

    denoising_strength: float | None = Field(
        None, ge=0.0, le=1.0, description=f"With init_image; default {INIT_STRENGTH}"
    )
    resize_mode: JsonInt = Field(
        0, ge=0, le=3,
        description="0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale",
    )  # fmt: skip
    mask_blur: JsonInt = Field(4, ge=0, le=64, description="Gaussian blur of the mask (px)")
    inpainting_fill: JsonInt = Field(
        1, ge=0, le=3, description="Masked content: 0 fill, 1 original, 2 latent noise, 3 nothing"
    )
    inpaint_full_res: bool = Field(False, description="Render only the mask's box, paste back")
    inpaint_full_res_padding: JsonInt = Field(32, ge=0, le=256, description="Pixels around it")
    inpainting_mask_invert: bool = Field(False, description="Repaint what is black")
    hires: HiresSettings | None = Field(
        None, description="Hires fix: a second, larger pass over the first pass's result"
    )


IMAGE_SETTINGS = tuple(set(ImageSettings.model_fields) - set(GenerationSettings.model_fields))


class ImageGenerateBody(ImageGenerationRequest):
    """POST /image/generate's body: the contract's request, image to image included."""

    init_image: str | None = Field(None, description=IMAGE_DESCRIPTION + "; image to image")
    mask: str | None = Field(
        None, description=IMAGE_DESCRIPTION + "; white repaints (only with init_image)"
    )
    settings: ImageSettings = Field(default_factory=ImageSettings)  # type: ignore[assignment]


def plain_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The body without the image fields: what ImageGenerationRequest parses, as before."""
    plain = {key: value for key, value in payload.items() if key not in IMAGE_FIELDS}
    settings = payload.get("settings")
    if isinstance(settings, dict):
        plain["settings"] = {k: v for k, v in settings.items() if k not in IMAGE_SETTINGS}
    return plain
