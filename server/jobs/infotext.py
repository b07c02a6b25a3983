"""AUTOMATIC1111's infotext: the text its PNG Info tab reads from a PNG's `parameters` chunk
and its API returns in `info.infotexts`. One builder for every generation, so an image made
through /image/generate and one made through /sdapi/v1/txt2img carry the same text.

As modules/processing.py's create_infotext writes it (1.10): the prompt, a
`Negative prompt:` line when there is one, then `Key: value` pairs in A1111's order (Steps,
Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model, Lora hashes, Version),
a value holding `,`, `:` or a newline written as a JSON string (infotext_utils.quote).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.samplers import UnsupportedSampler, a1111_samplers, a1111_schedulers, resolve
from pipelines.spec import INPAINTING_FILLS, GenerationSpec

VERSION = "darkroom-0.1.0"
# What AUTOMATIC1111 writes as a LoRA's short hash (extensions-builtin/Lora/network.py:
# the file's SHA-256, first 12 hex digits) and as a checkpoint's (sd_models.py: first 10).
LORA_SHORTHASH = 12
MODEL_SHORTHASH = 10


def quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def build(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    schedule: str | None,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str | None,
    model_name: str | None,
    lora_hashes: Sequence[tuple[str, str]] = (),
    notes: dict[str, str] | None = None,
) -> str:
    """The infotext of one image. `lora_hashes`: (name as mentioned, full or short hash);
    `notes`: further `Key: value` pairs written before Version (e.g. `Lora not found`)."""
    params: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": float(cfg_scale),
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash[:MODEL_SHORTHASH] if model_hash else None,
        "Model": model_name,
        **extra_params(lora_hashes, notes),
        "Version": VERSION,
    }
    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def extra_params(
    lora_hashes: Sequence[tuple[str, str]] = (), notes: dict[str, str] | None = None
) -> dict[str, str]:
    """A1111's `extra_generation_params` of a generation (also in txt2img's `info`)."""
    extra: dict[str, str] = {}
    if lora_hashes:
        extra["Lora hashes"] = ", ".join(
            f"{name.replace(':', '').replace(',', '')}: {digest[:LORA_SHORTHASH]}"
            for name, digest in lora_hashes
        )
    extra.update(notes or {})
    return extra


def image_params(image_job: dict[str, Any] | None) -> dict[str, str]:
    """What AUTOMATIC1111 writes of an img2img or a hires fix (`Denoising strength`, `Mask
    blur`, `Hires upscale`, ...), from a stored request's image_job."""
    if not image_job:
        return {}
    params: dict[str, Any] = {}
    image, hires = image_job.get("image"), image_job.get("hires")
    if image:
        params["Denoising strength"] = image["denoising_strength"]
        if image.get("mask"):
            params["Mask blur"] = image["mask_blur"]
            if image["inpaint_full_res"]:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = image["inpaint_full_res_padding"]
            if image["inpainting_mask_invert"]:
                params["Mask mode"] = "Inpaint not masked"
            params["Masked content"] = INPAINTING_FILLS[image["inpainting_fill"]]
    if hires:
        # An image to image's hires fix (Darkroom's; A1111 has none) keeps the first
        # pass's strength where A1111 reads it.
        strength = "Hires denoising strength" if image else "Denoising strength"
        params[strength] = hires["denoising_strength"]
        if hires.get("resize_x") or hires.get("resize_y"):
            params["Hires resize"] = f"{hires['width']}x{hires['height']}"
        else:
            params["Hires upscale"] = f"{hires['scale']:g}"
        if hires.get("steps_asked"):
            params["Hires steps"] = hires["steps_asked"]
        params["Hires upscaler"] = hires["upscaler"]
        if hires.get("sampler"):
            sampler, schedule = display_sampler(hires["sampler"])
            params["Hires sampler"] = sampler
            params["Hires schedule type"] = schedule
        if hires.get("prompt"):
            params["Hires prompt"] = hires["prompt"]
        if hires.get("negative_prompt"):
            params["Hires negative prompt"] = hires["negative_prompt"]
    return {key: f"{value:g}" if isinstance(value, float) else str(value)
            for key, value in params.items() if value is not None}  # fmt: skip


@cache
def _display_names() -> dict[str, tuple[str, str]]:
    """Darkroom's canonical sampler -> (A1111 sampler, schedule label). The schedule is
    always named (Karras, Uniform, ...), never "Automatic": the text then means the same
    to AUTOMATIC1111 and to Darkroom's own API, where "DPM++ 2M" alone has no Karras."""
    labels = {s["name"]: s["label"] for s in a1111_schedulers() if s["name"] != "automatic"}
    names: dict[str, tuple[str, str]] = {}
    for sampler in a1111_samplers():
        for schedule in labels:
            try:
                canonical = resolve(sampler["name"], schedule)
            except UnsupportedSampler:
                continue
            names.setdefault(canonical, (sampler["name"], labels[schedule]))
    return names


def display_sampler(canonical: str) -> tuple[str, str | None]:
    """How AUTOMATIC1111 names a Darkroom sampler in an infotext; a sampler it does not list
    keeps Darkroom's name and no schedule."""
    return _display_names().get(canonical, (canonical, None))


def for_generation(
    stored_request: dict[str, Any],
    spec: GenerationSpec,
    seed: int,
    model_name: str | None,
    model_hash: str | None,
    loras: Sequence[tuple[Path, str, float]],
) -> str:
    """The infotext of one image of a stored generation. A txt2img request keeps what its
    client sent under `a1111` (the prompt with its LoRA tags, A1111's sampler names);
    `loras`: (file, sha256, weight) of the LoRAs a contract request named by id, written
    as A1111 prompt tags after the prompt (so `darkroom reproduce` and A1111 apply them
    again) and as `Lora hashes`."""
    a1111 = stored_request.get("a1111")
    images = image_params(stored_request.get("image_job"))
    if a1111:
        return build(
            prompt=a1111["prompt"],
            negative_prompt=a1111["negative_prompt"],
            steps=spec.steps,
            sampler=a1111["sampler"],
            schedule=a1111["schedule"],
            cfg_scale=spec.cfg_scale,
            seed=seed,
            width=spec.width,
            height=spec.height,
            model_hash=model_hash,
            model_name=model_name,
            lora_hashes=[tuple(pair) for pair in a1111["lora_hashes"]],
            notes={**images, **(a1111.get("notes") or {})} or None,
        )
    sampler, schedule = display_sampler(spec.sampler)
    tags = "".join(f" <lora:{path.stem}:{weight:g}>" for path, _, weight in loras)
    return build(
        prompt=spec.prompt + tags,
        negative_prompt=spec.negative_prompt,
        steps=spec.steps,
        sampler=sampler,
        schedule=schedule,
        cfg_scale=spec.cfg_scale,
        seed=seed,
        width=spec.width,
        height=spec.height,
        model_hash=model_hash,
        model_name=model_name,
        lora_hashes=[(path.stem, digest) for path, digest, _ in loras],
        notes=images or None,
    )


# A1111's re_param_code, with keys of at most 64 characters: its unbounded key made a long
# line without a colon take quadratic time (minutes for png-info's 1 MB of text).
_PARAM = re.compile(r'\s*(\w[\w \-/]{0,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse(text: str) -> dict[str, Any]:
    """An infotext as A1111's parse_generation_parameters reads it: `Prompt`, `Negative
    prompt` and each `Key: value` (JSON-quoted values unquoted; `Size` also as Size-1/2)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        result[key] = value
        if key == "Size" and "x" in value:
            result["Size-1"], result["Size-2"] = value.split("x", 1)
    return result
