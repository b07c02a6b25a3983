"""Generation parameters embedded in images, in AUTOMATIC1111's infotext format:

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, ...

PNG carries it as the `parameters` text chunk, JPEG and WebP as EXIF UserComment
(`UNICODE\\0` + UTF-16, or `ASCII\\0\\0\\0` + text), as AUTOMATIC1111 and Darkroom write it."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageStat

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
# AUTOMATIC1111's own pattern for `Key: value` pairs (a value may be a JSON string).
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([-0-9.]+))?[^>]*>")
FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}


def read_parameters(source: str | Path | bytes | Image.Image) -> str | None:
    """The infotext embedded in an image file, or None."""
    image = _open(source)
    text = image.info.get("parameters")
    if isinstance(text, str) and text:
        return text
    comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if comment:
        return decode_user_comment(comment)
    return None


def decode_user_comment(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\0":
        # piexif (AUTOMATIC1111) writes big-endian; guess from the first ASCII character.
        little = len(body) >= 2 and body[0] != 0 and body[1] == 0
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    if prefix in (b"ASCII\0\0\0", b"\0" * 8):
        return body.decode("utf-8", errors="replace").rstrip("\0")
    return data.decode("utf-8", errors="replace").rstrip("\0")


def parse_infotext(text: str) -> dict[str, Any]:
    """{"prompt", "negative_prompt", "params": {key: value}} as AUTOMATIC1111 parses it."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    if len(PARAM.findall(last)) < 3:
        last = ""
    else:
        lines = lines[:-1]
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    params: dict[str, str] = {}
    for key, value in PARAM.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        params[key.strip()] = value
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), "params": params}


def settings_from_infotext(text: str) -> dict[str, Any]:
    """Keyword settings for `Client.generate` (plus `lora_tags`: the `<lora:NAME:W>` tags
    AUTOMATIC1111 keeps in its prompt, taken out of it, for the caller to resolve)."""
    parsed = parse_infotext(text)
    params = parsed["params"]
    prompt = parsed["prompt"]
    tags = [(name, float(weight) if weight else 1.0) for name, weight in LORA_TAG.findall(prompt)]
    if tags:
        prompt = re.sub(r"\s*,?\s*" + LORA_TAG.pattern, "", prompt).strip(" ,")
    settings: dict[str, Any] = {"prompt": prompt}
    if parsed["negative_prompt"]:
        settings["negative_prompt"] = parsed["negative_prompt"]
    if "Steps" in params:
        settings["steps"] = int(params["Steps"])
    if "CFG scale" in params:
        cfg = float(params["CFG scale"])
        settings["cfg"] = int(cfg) if cfg.is_integer() else cfg
    if "Seed" in params:
        settings["seed"] = int(params["Seed"])
    if "Size" in params:
        width, _, height = params["Size"].partition("x")
        settings["width"], settings["height"] = int(width), int(height)
    sampler = params.get("Sampler")
    if sampler:
        # Darkroom's API names a schedule in the sampler ("DPM++ 2M Karras"); uniform (and
        # normal, the same sigmas) is what a bare name means there.
        settings["sampler"] = _with_schedule(sampler, params.get("Schedule type", ""))
    if params.get("Model"):
        settings["model"] = params["Model"]
    if params.get("Model hash"):
        settings["model_hash"] = params["Model hash"]
    settings["lora_tags"] = tags
    return settings


INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")


def _with_schedule(sampler: str, schedule: str) -> str:
    plain = ("", "automatic", "uniform", "normal")
    if schedule.lower() not in plain and schedule.lower() not in sampler.lower():
        return f"{sampler} {schedule}"
    return sampler


# Written (by Darkroom, not AUTOMATIC1111) for an image to image with a hires fix, whose
# `Denoising strength` is the first pass's.
HIRES_STRENGTH = "Hires denoising strength"


def image_settings(text: str) -> dict[str, Any]:
    """The image to image or hires fix settings an infotext records, as keyword settings:
    `hires` (a dict) for a hires fix; `denoising_strength` and the inpainting settings
    (`mask_blur`, ...) for an image to image, which also needs its init image (and mask,
    when `mask_blur` is there), which no infotext carries. Both for an image to image with
    a hires fix (Darkroom's `Hires denoising strength` is then the second pass's)."""
    params = parse_infotext(text)["params"]
    settings: dict[str, Any] = {}
    hires = "Hires upscale" in params or "Hires resize" in params
    if hires:
        settings["hires"] = _hires(params)
    if "Denoising strength" not in params or (hires and HIRES_STRENGTH not in params):
        return settings
    settings["denoising_strength"] = float(params["Denoising strength"])
    if "Mask blur" in params:
        settings["mask_blur"] = int(params["Mask blur"])
        settings["inpaint_full_res"] = params.get("Inpaint area") == "Only masked"
        if "Masked area padding" in params:
            settings["inpaint_full_res_padding"] = int(params["Masked area padding"])
        settings["inpainting_mask_invert"] = params.get("Mask mode") == "Inpaint not masked"
        fill = params.get("Masked content", "original")
        if fill in INPAINTING_FILLS:
            settings["inpainting_fill"] = INPAINTING_FILLS.index(fill)
    return settings


def _hires(params: dict[str, str]) -> dict[str, Any]:
    hires: dict[str, Any] = {}
    if "Hires resize" in params:
        width, _, height = params["Hires resize"].partition("x")
        hires["width"], hires["height"] = int(width), int(height)
    else:
        hires["scale"] = float(params["Hires upscale"])
    if "Hires steps" in params:
        hires["steps"] = int(params["Hires steps"])
    if "Hires upscaler" in params:
        hires["upscaler"] = params["Hires upscaler"]
    strength = params.get(HIRES_STRENGTH, params.get("Denoising strength"))
    if strength is not None:
        hires["denoising_strength"] = float(strength)
    if params.get("Hires sampler"):
        hires["sampler"] = _with_schedule(
            params["Hires sampler"], params.get("Hires schedule type", "")
        )
    for key, name in (("Hires prompt", "prompt"), ("Hires negative prompt", "negative_prompt")):
        if params.get(key):
            hires[name] = params[key]
    return hires


def image_format(source: str | Path | bytes | Image.Image) -> str:
    return FORMATS.get(_open(source).format or "", "png")


def jpeg_quality(source: str | Path | bytes | Image.Image) -> int | None:
    """The quality a libjpeg-encoded JPEG was saved with (its quantization tables match
    the standard tables at that quality), or None."""
    image = _open(source)
    tables = getattr(image, "quantization", None)
    if image.format != "JPEG" or not tables:
        return None
    probe = Image.new("RGB", (8, 8))
    for quality in range(100, 0, -1):
        buffer = io.BytesIO()
        probe.save(buffer, "JPEG", quality=quality)
        if Image.open(buffer).quantization == tables:
            return quality
    return None


def _open(source: str | Path | bytes | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def compare(a: Image.Image, b: Image.Image) -> dict[str, Any]:
    """Identical pixels, or how far apart: max absolute difference and PSNR (dB)."""
    a, b = a.convert("RGB"), b.convert("RGB")
    if a.size != b.size:
        return {"identical": False, "size": [a.size, b.size], "max_abs_diff": None, "psnr": None}
    diff = ImageChops.difference(a, b)
    max_diff = max(high for _, high in diff.getextrema())
    mse = sum(rms**2 for rms in ImageStat.Stat(diff).rms) / 3
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return {"identical": max_diff == 0, "max_abs_diff": max_diff, "psnr": psnr}
