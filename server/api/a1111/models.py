"""AUTOMATIC1111 1.10's txt2img request (modules/api/models.py,
StableDiffusionTxt2ImgProcessingAPI): its fields and defaults, parsed as FastAPI does (lax:
"20" is 20), unknown fields ignored and null meaning the default (JavaScript clients send
both). What Darkroom cannot honour is refused by `refusals`; what clients send as no-ops
(`enable_hr: false`, `restore_faces: false`, empty `alwayson_scripts`) passes."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.spec import IMAGE_UPSCALERS, LATENT_UPSCALERS
from server.api.a1111.errors import Invalid, from_validation

HIRES_UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    # A1111 says 512; Darkroom defaults to the model's native size (1024 for SDXL).
    width: int | None = None
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None
    # SD.Next's spelling of CLIP skip (SillyTavern sends both).
    clip_skip: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @property
    def sampler(self) -> str:
        return self.sampler_name or self.sampler_index

    @property
    def num_images(self) -> int:
        return self.batch_size * self.n_iter


class Img2ImgRequest(Txt2ImgRequest):
    """AUTOMATIC1111 1.10's img2img request (StableDiffusionImg2ImgProcessingAPI): txt2img's
    fields (its hires fix refused) and the image ones, with A1111's defaults."""

    init_images: list[Any] = Field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


def parse(data: dict[str, Any], model: type[Txt2ImgRequest] = Txt2ImgRequest) -> Txt2ImgRequest:
    """The request, or a 422 naming every bad field. Non-finite numbers are refused
    anywhere in the body (free-form fields like override_settings included): they
    could be neither rendered nor echoed back in `parameters`."""
    non_finite = non_finite_fields(data)
    if non_finite:
        raise Invalid(
            *((f, "Input should be a finite number") for f in non_finite), kind="finite_number"
        )
    try:
        request = model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None
    problems = refusals(request)
    if problems:
        raise Invalid(*problems)
    return request


def non_finite_fields(data: Any) -> list[str]:
    """The dotted paths of every NaN or infinity in a parsed JSON value (walked without
    recursion: the value may be nested deep)."""
    found, stack = [], [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
        elif isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), v) for key, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return sorted(found)


# Values that change nothing (A1111's defaults, or what clients send meaning "off").
_NO_OP: dict[str, tuple[Any, ...]] = {
    "eta": (None, 1.0),
    "s_min_uncond": (None, 0.0),
    "s_churn": (None, 0.0),
    "s_tmin": (None, 0.0),
    "s_tmax": (None, 0.0),
    "s_noise": (None, 1.0),
    "subseed_strength": (0.0,),
    "tiling": (None, False),
    "restore_faces": (None, False),
}
_WHY = {
    "restore_faces": "face restoration is not supported",
    "tiling": "tiling is not supported",
    "subseed_strength": "variation seeds are not supported",
    "eta": "only eta 1 (A1111's default) is supported",
}
_NO_VAE = (None, "", "Automatic", "None")


def refusals(request: Txt2ImgRequest) -> list[tuple[str, str]]:
    """(field, why) for each thing asked that Darkroom cannot do as AUTOMATIC1111 would."""
    problems = [
        (field, _WHY.get(field, f"only {allowed[-1]!r} is supported (got {value!r})"))
        for field, allowed in _NO_OP.items()
        if (value := getattr(request, field)) not in allowed
    ]
    if request.styles:
        problems.append(("styles", "prompt styles are not supported"))
    if request.script_name:
        problems.append(("script_name", f"script {request.script_name!r} is not available"))
    if request.alwayson_scripts:
        names = ", ".join(sorted(request.alwayson_scripts))
        problems.append(("alwayson_scripts", f"scripts not available: {names}"))
    if request.seed_resize_from_w > 0 or request.seed_resize_from_h > 0:
        problems.append(("seed_resize_from_w", "seed resize is not supported"))
    if request.refiner_checkpoint not in (None, "", "None"):
        problems.append(("refiner_checkpoint", "a refiner is not supported"))
    overrides = request.override_settings
    clip_skip = overrides.get("CLIP_stop_at_last_layers") or 1
    if not isinstance(clip_skip, (int, float)) or max(clip_skip, request.clip_skip or 1) > 1:
        problems.append(("clip_skip", "CLIP skip other than 1 is not supported"))
    if overrides.get("sd_vae") not in _NO_VAE:
        problems.append(("override_settings.sd_vae", "only the model's own VAE is available"))
    if request.batch_size < 1 or request.n_iter < 1:
        problems.append(("batch_size", "batch_size and n_iter must be at least 1"))
    if isinstance(request, Img2ImgRequest):
        return problems + img2img_refusals(request)
    if request.enable_hr:
        problems += hires_refusals(request)
    return problems


def _strength(request: Txt2ImgRequest) -> list[tuple[str, str]]:
    strength = request.denoising_strength
    if strength is not None and not 0 <= strength <= 1:
        return [("denoising_strength", f"must be between 0 and 1, got {strength}")]
    return []


def hires_refusals(request: Txt2ImgRequest) -> list[tuple[str, str]]:
    problems = _strength(request)
    if request.hr_upscaler not in (None, *HIRES_UPSCALERS):
        problems.append(
            ("hr_upscaler", f"upscaler {request.hr_upscaler!r} not available; available: "
             + ", ".join(HIRES_UPSCALERS))
        )  # fmt: skip
    if not 1 <= request.hr_scale <= 4 and not (request.hr_resize_x or request.hr_resize_y):
        problems.append(("hr_scale", f"must be between 1 and 4, got {request.hr_scale}"))
    if not 0 <= request.hr_second_pass_steps <= 150:
        problems.append(("hr_second_pass_steps", "must be between 0 and 150"))
    if min(request.hr_resize_x, request.hr_resize_y) < 0:
        problems.append(("hr_resize_x", "must not be negative"))
    if request.hr_checkpoint_name not in (None, "", "Use same checkpoint"):
        problems.append(("hr_checkpoint_name", "a second checkpoint is not supported"))
    return problems


def img2img_refusals(request: Img2ImgRequest) -> list[tuple[str, str]]:
    problems = _strength(request)
    if request.enable_hr:
        problems.append(("enable_hr", "hires fix applies to txt2img only"))
    if len(request.init_images) != 1:
        problems.append(("init_images", "exactly one init image is supported"))
    if request.resize_mode not in range(4):
        problems.append(("resize_mode", f"must be 0, 1, 2 or 3, got {request.resize_mode}"))
    if request.inpainting_fill not in range(4):
        problems.append(("inpainting_fill", "must be 0, 1, 2 or 3"))
    if request.mask_blur is None and request.mask_blur_x != request.mask_blur_y:
        problems.append(("mask_blur_x", "separate X and Y mask blurs are not supported"))
    if not 0 <= (request.mask_blur if request.mask_blur is not None else request.mask_blur_x) <= 64:
        problems.append(("mask_blur", "must be between 0 and 64"))
    if not 0 <= request.inpaint_full_res_padding <= 256:
        problems.append(("inpaint_full_res_padding", "must be between 0 and 256"))
    if not request.mask_round:
        problems.append(("mask_round", "only rounded (binary) masks are supported"))
    if request.latent_mask:
        problems.append(("latent_mask", "a separate latent mask is not supported"))
    if request.initial_noise_multiplier not in (None, 1.0):
        problems.append(("initial_noise_multiplier", "only 1 is supported"))
    return problems
