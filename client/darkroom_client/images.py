"""Request bodies for image to image (`Client.edit`) and the hires fix (`generate(...,
hires=2)`): bodies.build_request's body plus the contract's `init_image`, `mask` and the
image settings (docs/image-to-image.md)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from darkroom_client.bodies import build_request

# Keyword settings a body takes beside bodies.SETTING_KWARGS, as `settings` fields.
IMAGE_SETTINGS = frozenset({
    "denoising_strength", "resize_mode", "mask_blur", "inpainting_fill", "inpaint_full_res",
    "inpaint_full_res_padding", "inpainting_mask_invert",
})  # fmt: skip
IMAGE_KWARGS = IMAGE_SETTINGS | {"hires"}


def encode_image(source: Any, what: str = "image") -> str:
    """A path (str or os.PathLike) or bytes as base64; a PIL image as PNG base64."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = Path(source).read_bytes()
    elif hasattr(source, "save"):  # a PIL image
        import io

        buffer = io.BytesIO()
        source.save(buffer, "PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"{what} must be a path or bytes, not {type(source).__name__}")
    return base64.b64encode(data).decode("ascii")


def hires_settings(hires: Any) -> dict[str, Any]:
    """`hires=`: a number is the scale; a dict is the contract's `settings.hires`."""
    if isinstance(hires, bool) or not isinstance(hires, (int, float, dict)):
        raise TypeError(f"hires must be a scale (a number) or a dict, not {hires!r}")
    if isinstance(hires, dict):
        return {key: value for key, value in hires.items() if value is not None}
    return {"scale": float(hires)}


def build_body(
    prompt: str | None = None, request: dict[str, Any] | None = None, **settings: Any
) -> dict[str, Any]:
    """build_request, plus `hires=` and the image settings (mask_blur, ...)."""
    extra = {name: settings.pop(name) for name in IMAGE_KWARGS if name in settings}
    body = build_request(prompt, request, **settings)
    extra = {name: value for name, value in extra.items() if value is not None}
    if extra:
        part = body.setdefault("settings", {})
        for name, value in extra.items():
            part[name] = hires_settings(value) if name == "hires" else value
    return body


def build_edit(
    image: Any,
    prompt: str | None,
    mask: Any = None,
    strength: float | None = 0.75,
    request: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """An image to image body: `image` (and `mask`, white repaints) as paths or bytes."""
    body = build_body(prompt, request, denoising_strength=strength, **settings)
    body["init_image"] = encode_image(image)
    if mask is not None:
        body["mask"] = encode_image(mask, "mask")
    return body
