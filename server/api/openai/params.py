"""OpenAI's image parameters, read and checked: what `POST /v1/images/generations` (a JSON
body) and the multipart routes take, with Darkroom's own knobs as extra fields
(`negative_prompt`, `seed`, `steps`, `cfg_scale`, `sampler`, `scheduler`, `loras`,
`provider`: the `openai` package sends them with `extra_body`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from server.api.openai.errors import invalid

MAX_N = 10  # OpenAI's bound for dall-e-2 and the GPT image models
NATIVE_SIZE = 1024  # SDXL's native size: what `size: auto` renders
NAMED_SIZES = ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536",
               "1792x1024", "1024x1792")  # fmt: skip
# `quality` in sampling steps. `auto`, `standard` and `medium` are the contract's default
# (30); `hd` is DALL-E 3's finer detail, the same as `high`.
QUALITY_STEPS = {"low": 20, "medium": 30, "auto": 30, "standard": 30, "high": 40, "hd": 40}
OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("url", "b64_json")
# OpenAI's own model names: configurations written for OpenAI render with the default.
OPENAI_MODEL = re.compile(r"^(dall-e-|gpt-image-|chatgpt-image-)")
EXTRA_FIELDS = ("negative_prompt", "seed", "steps", "cfg_scale", "sampler", "scheduler", "loras",
                "provider", "strength")  # fmt: skip


@dataclass
class ImageParams:
    prompt: str
    model: str | None = None
    n: int = 1
    size: str = "auto"
    width: int = NATIVE_SIZE
    height: int = NATIVE_SIZE
    response_format: str = "url"
    output_format: str = "png"
    output_compression: int = 100
    quality: str = "auto"
    background: str = "auto"
    user: str | None = None
    stream: bool = False
    partial_images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # The streamed events' type prefix: OpenAI's edits stream `image_edit.*` events.
    event: str = "image_generation"

    @property
    def steps(self) -> int:
        return self.extra.get("steps") or QUALITY_STEPS[self.quality]


def read_params(data: dict[str, Any], *, prompt_required: bool = True) -> ImageParams:
    """Checked parameters, or a 400 `invalid_request_error` naming the first bad one."""
    prompt = data.get("prompt")
    if prompt is None and not prompt_required:
        prompt = ""
    if not isinstance(prompt, str) or (prompt_required and not prompt.strip()):
        raise invalid("prompt", "'prompt' is required and must be a non-empty string")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model", "'model' must be a string")
    params = ImageParams(prompt=prompt, model=model or None)
    params.n = _integer(data, "n", 1, 1, MAX_N)
    params.size, params.width, params.height = _size(data.get("size"))
    params.response_format = _choice(
        data, "response_format", RESPONSE_FORMATS, _default_format(model)
    )
    params.output_format = _choice(data, "output_format", OUTPUT_FORMATS, "png")
    params.output_compression = _integer(data, "output_compression", 100, 0, 100)
    params.quality = _choice(data, "quality", tuple(QUALITY_STEPS), "auto")
    params.background = _choice(data, "background", ("auto", "opaque", "transparent"), "auto")
    if params.background == "transparent":
        raise invalid(
            "background",
            "background 'transparent' is not supported: SDXL renders opaque images; "
            "use 'opaque' or 'auto'",
        )
    user = data.get("user")
    params.user = str(user)[:256] if user is not None else None
    params.stream = _boolean(data, "stream")
    params.partial_images = _integer(data, "partial_images", 0, 0, 3)
    params.extra = {name: data[name] for name in EXTRA_FIELDS if data.get(name) is not None}
    # `style` and `moderation` are accepted and ignored: SDXL has neither.
    return params


def is_openai_model(name: str) -> bool:
    return bool(OPENAI_MODEL.match(name))


def _default_format(model: Any) -> str:
    """DALL-E answers with URLs unless asked; the GPT image models always with base64."""
    gpt_image = isinstance(model, str) and model.startswith(("gpt-image-", "chatgpt-image-"))
    return "b64_json" if gpt_image else "url"


def _size(value: Any) -> tuple[str, int, int]:
    if value is None or value == "auto":
        return "auto", NATIVE_SIZE, NATIVE_SIZE
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", value) if isinstance(value, str) else None
    if match is None:
        raise invalid(
            "size",
            f"Invalid size {value!r}: expected 'auto' or WIDTHxHEIGHT, e.g. one of "
            + ", ".join(NAMED_SIZES),
        )
    width, height = int(match[1]), int(match[2])
    if width % 8 or height % 8 or not (256 <= width <= 2048 and 256 <= height <= 2048):
        raise invalid(
            "size",
            f"Invalid size {value!r}: width and height must be multiples of 8 from 256 to 2048",
        )
    return value, width, height


def _integer(data: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # multipart fields are text
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(name, f"'{name}' must be an integer from {low} to {high}, got {value!r}")
    return value


def _choice(data: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = data.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise invalid(name, f"Invalid '{name}' {value!r}: expected one of {', '.join(allowed)}")
    return value


def _boolean(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(name, f"'{name}' must be a boolean, got {value!r}")
