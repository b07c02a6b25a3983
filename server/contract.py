"""Pydantic models of the ChatEnhanced image API contract v1: requests, responses, limits, errors.

Requests are parsed strictly (a string is not a number, 30.0 is not a step count) but
forgivingly: unknown fields are ignored and an explicit null means "use the default",
since JavaScript clients send both.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipelines.samplers import SAMPLER_NAMES, SAMPLER_SPELLINGS, canonical_sampler
from server.net.ssrf import url_problem

CONTRACT_PREFIX = "/api:_WUcacrv"
MAX_SEED = 2**32 - 1
MAX_IMAGES = 8
CONTRACT_MIN_STEPS = 10
# Validation context of a request admitted before (a stored row), or of an API with
# AUTOMATIC1111's ranges: steps from 1, not the contract's 10.
ANY_STEPS = {"min_steps": 1}
# An image-to-image with no prompt at all (OpenAI's variations): SDXL encodes the empty text.
EMPTY_PROMPT = {"empty_prompt": True}
PROVIDER_NAME = "darkroom"

Status = Literal["pending", "processing", "completed", "failed"]


class ErrorCode:
    VALIDATION_ERROR = "VALIDATION_ERROR"
    INVALID_LORA = "INVALID_LORA"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    EXPIRED = "EXPIRED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"  # 409: a request with the same Idempotency-Key is in progress
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class ApiError(Exception):
    """An error a client gets as `{"status": "failed", "error": {code, message, details}}`."""

    def __init__(
        self,
        code: str,
        message: str,
        details: Any = None,
        http_status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.http_status = http_status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"status": "failed", "error": error_object(self.code, self.message, self.details)}


def error_object(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details if details is not None else {}}


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, f"{what} {ident} not found", {"id": ident}, 404)


def _whole_number(value: Any) -> Any:
    # JSON (and JavaScript) has one number type: 30.0 is the integer 30, as JSON Schema says.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_whole_number)]
SIZE = {"multipleOf": 8}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class GenerationSettings(_Strict):
    cfg_scale: float = Field(7.5, ge=1.0, le=30.0)
    steps: JsonInt = Field(30, ge=1, le=150, json_schema_extra={"minimum": CONTRACT_MIN_STEPS})
    sampler: str = Field(
        "euler",
        json_schema_extra={"enum": list(SAMPLER_SPELLINGS)},
        description="Any spelling AUTOMATIC1111 or ComfyUI uses; answered with ours",
    )
    seed: JsonInt = Field(-1, ge=-1, le=MAX_SEED)
    width: JsonInt = Field(1024, ge=256, le=2048, json_schema_extra=SIZE)
    height: JsonInt = Field(1024, ge=256, le=2048, json_schema_extra=SIZE)
    negative_prompt: str = ""
    model: str | None = Field(
        None,
        max_length=500,
        description="A model's name, title or hash from GET /models; absent: the default",
    )

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        name = canonical_sampler(value)
        if name is None:
            raise ValueError(
                f"unknown sampler {value!r}; valid samplers: {', '.join(SAMPLER_NAMES)}"
            )
        return name

    @field_validator("steps")
    @classmethod
    def _route_min_steps(cls, value: int, info: ValidationInfo) -> int:
        least = (info.context or {}).get("min_steps", CONTRACT_MIN_STEPS)
        if value < least:
            raise ValueError(f"Input should be greater than or equal to {least}")
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value


class LoraRef(_Strict):
    id: JsonInt
    weight: float = Field(1.0, ge=0.0, le=2.0)


class GenerationOptions(_Strict):
    provider: Literal["auto", "fal", "rundiffusion"] = "auto"
    # The upper bound (8) is a LIMIT_EXCEEDED, not a validation error: see check_limits.
    num_images: JsonInt = Field(1, ge=1)
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: JsonInt = Field(95, ge=0, le=100)
    save_to_vault: bool = True
    # Additive: POST the final status object here, signed (server/jobs/webhooks.py).
    webhook_url: str | None = Field(
        None, max_length=2048, json_schema_extra={"format": "uri", "pattern": "^https?://"}
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        problem = url_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


def _unique_lora_ids(loras: list[LoraRef]) -> list[LoraRef]:
    ids = [lora.id for lora in loras]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"LoRA ids listed more than once: {repeated}")
    return loras


class ImageGenerationRequest(_Strict):
    # Empty only where the validation context allows it (EMPTY_PROMPT: OpenAI's variations).
    prompt: str = Field(json_schema_extra={"minLength": 1})
    settings: GenerationSettings = Field(default_factory=GenerationSettings)
    loras: list[LoraRef] = Field(default_factory=list)
    options: GenerationOptions = Field(default_factory=GenerationOptions)

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() and not (info.context or {}).get("empty_prompt"):
            raise ValueError("prompt must not be empty")
        return value

    _loras_unique = field_validator("loras")(_unique_lora_ids)


class SavePresetRequest(_Strict):
    name: str = Field(min_length=1, max_length=200)
    settings: GenerationSettings = Field(default_factory=GenerationSettings)
    loras: list[LoraRef] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)

    _loras_unique = field_validator("loras")(_unique_lora_ids)


class HistoryQuery(BaseModel):
    """Query strings are text, so this one model parses leniently ("2" is a page number)."""

    model_config = ConfigDict(extra="ignore")

    page: int = Field(1, ge=1, le=1_000_000)
    per_page: int = Field(20, ge=1, le=100)
    date_from: str | None = None
    has_seed: bool | None = None
    # Additive, for the console's gallery: prompt text, model name, LoRA id, status, end date.
    q: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=500)
    lora: int | None = Field(None, ge=0, le=2**62)
    status: Literal["pending", "processing", "completed", "failed"] | None = None
    date_to: str | None = None


def parse(model: type[BaseModel], data: Any, context: dict[str, Any] | None = None) -> Any:
    """Validate `data` against `model`, or raise a VALIDATION_ERROR naming every bad field."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error(exc) from None


def stored_request(request_json: str) -> ImageGenerationRequest:
    """A stored generation's request: it passed its route's ranges when it was admitted."""
    return ImageGenerationRequest.model_validate_json(
        request_json, context={**ANY_STEPS, **EMPTY_PROMPT}
    )


def validation_error(exc: ValidationError) -> ApiError:
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        fields[where] = f"{fields[where]}; {message}" if where in fields else message
    summary = "; ".join(f"{k}: {v}" for k, v in fields.items())
    return ApiError(ErrorCode.VALIDATION_ERROR, f"Invalid request: {summary}", {"fields": fields})


def check_limits(
    loras: list[LoraRef], num_images: int, max_loras: int, max_images: int = MAX_IMAGES
) -> None:
    if num_images > max_images:
        raise ApiError(
            ErrorCode.LIMIT_EXCEEDED,
            f"Too many images requested: {num_images} (at most {max_images})",
            {"field": "options.num_images", "requested": num_images, "limit": max_images},
        )
    if len(loras) > max_loras:
        raise ApiError(
            ErrorCode.LIMIT_EXCEEDED,
            f"Too many LoRAs requested: {len(loras)} (at most {max_loras})",
            {"field": "loras", "requested": len(loras), "limit": max_loras},
        )


def check_lengths(prompt: str, negative_prompt: str, max_chars: int) -> None:
    fields = {
        name: f"at most {max_chars} characters, got {len(text)}"
        for name, text in (("prompt", prompt), ("settings.negative_prompt", negative_prompt))
        if len(text) > max_chars
    }
    if fields:
        summary = "; ".join(f"{k}: {v}" for k, v in fields.items())
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"Invalid request: {summary}", {"fields": fields}
        )


# Responses. Handlers build these with only the fields that apply and dump them with
# exclude_unset, so "present when status = ..." in the contract holds literally.


class ImageMetadata(BaseModel):
    seed: int
    width: int
    height: int
    generation_time: int  # milliseconds
    provider: str
    format: str
    sampler: str
    steps: int
    cfg_scale: float
    model: str | None = None
    model_hash: str | None = None


class ImageInfo(BaseModel):
    url: str
    vault_url: str | None
    thumbnail_url: str | None = None
    metadata: ImageMetadata


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None


class ImageGenerationResponse(BaseModel):
    request_id: str
    status: Status
    poll_url: str | None = None
    estimated_time: float | None = None
    images: list[ImageInfo] | None = None
    error: ErrorInfo | None = None
    credits_used: float
    generation_id: int


class LoraModel(BaseModel):
    id: int
    name: str
    file_size_mb: float
    type: str
    personality: str
    url: str
    description: str
    tags: list[str]
    thumbnail_url: str | None = None
    usage_count: int
    avg_weight: float


def credits_for(width: int, height: int, steps: float, num_images: int) -> float:
    """The documented cost: one credit is one 1024x1024 image at 30 steps, linear in each.
    `steps`: the steps run, as base-size steps (an img2img's last ceil(steps * strength);
    a hires fix's second pass adds its steps times its pixels / the base size's)."""
    return round(num_images * (width * height) / (1024 * 1024) * steps / 30, 4)
