"""A stored generation's image-to-image part: what AUTOMATIC1111's img2img and hires fix
asked for, kept beside the request under `image_job` (init image and mask as vault names),
and the pipeline's ImageInput / HiresFix made from it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from pipelines.spec import HiresFix, ImageInput, hires_size
from server.store.vault import Vault

KEY = "image_job"
# The inputs' PNG bytes by vault name, carried with a new job until admission has
# committed it (then written again if gone: see write_inputs); never stored.
PENDING = "pending_files"
MAX_HIRES_SIZE = 4096
HIRES_STRENGTH = 0.7  # AUTOMATIC1111's hires fix default
INIT_STRENGTH = 0.75  # AUTOMATIC1111's img2img default
_HIRES_FIELDS = tuple(f.name for f in fields(HiresFix))


def image_parts(stored: dict[str, Any], vault: Vault | None = None) -> dict[str, Any]:
    """build_spec's `image` and `hires` of a stored request ({} for a text-to-image);
    with `vault`, the init image and mask as the files the render process reads."""
    job = stored.get(KEY) or {}
    parts: dict[str, Any] = {}
    if job.get("image"):
        image = dict(job["image"])
        if vault is not None:
            image["init_image"] = str(vault.path(image["init_image"]))
            if image.get("mask"):
                image["mask"] = str(vault.path(image["mask"]))
        parts["image"] = ImageInput(**image)
    if job.get("hires"):
        parts["hires"] = HiresFix(**{k: job["hires"][k] for k in _HIRES_FIELDS})
    return parts


def mask_and_hires(job: dict[str, Any] | None) -> tuple[bool, bool]:
    """Whether an image job is an inpainting, and has a hires fix (an SDXL inpainting model
    renders an inpainting without one)."""
    job = job or {}
    return bool((job.get("image") or {}).get("mask")), bool(job.get("hires"))


def inputs_of(stored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The generation's input images: {"init_image": {name, sha256, width, height}, ...}."""
    return (stored.get(KEY) or {}).get("inputs") or {}


def new_job(
    vault: Vault,
    init: tuple[bytes, tuple[int, int]],
    mask: tuple[bytes, tuple[int, int]] | None,
    **image: Any,
) -> dict[str, Any]:
    """An image-to-image's part of a request: its init image and mask (PNG bytes and size)
    kept in the vault once per content, and pipelines.spec.ImageInput's other fields
    (`image`: denoising_strength (None: INIT_STRENGTH), resize_mode, mask_blur, ...)."""
    if image.get("denoising_strength") is None:
        image["denoising_strength"] = INIT_STRENGTH
    inputs, files = {}, {}
    for field, given in (("init_image", init), ("mask", mask)):
        if given is not None:
            png, (width, height) = given
            name, digest = vault.save_input(png)
            inputs[field] = {"name": name, "sha256": digest, "width": width, "height": height}
            files[name] = png
    mask_name = inputs["mask"]["name"] if "mask" in inputs else None
    return {
        "image": {"init_image": inputs["init_image"]["name"], "mask": mask_name, **image},
        "inputs": inputs,
        PENDING: files,
    }


def split_pending(job: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    """A new job as stored, and its inputs' bytes by vault name."""
    if not job:
        return job, {}
    return {k: v for k, v in job.items() if k != PENDING}, dict(job.get(PENDING) or {})


class HiresTooLarge(ValueError):
    """A hires target over MAX_HIRES_SIZE; each API names its own field."""


def hires_job(
    width: int,
    height: int,
    *,
    scale: float,
    resize_x: int = 0,
    resize_y: int = 0,
    upscaler: str | None,
    steps: int,
    base_steps: int,
    denoising_strength: float | None,
    sampler: str | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
) -> dict[str, Any]:
    """A text-to-image's hires fix as stored (pipelines.spec.HiresFix's fields, and what
    the infotext says of it): `width` x `height` upscaled by `scale` (or to `resize_x` /
    `resize_y`), `steps` 0 meaning `base_steps`; `sampler` a canonical name or None (the
    first pass's)."""
    target = hires_size(width, height, scale, resize_x, resize_y)
    if max(target) > MAX_HIRES_SIZE:
        raise HiresTooLarge(f"the hires size {target[0]}x{target[1]} is above {MAX_HIRES_SIZE}")
    return {
        "width": target[0],
        "height": target[1],
        "upscaler": upscaler or "Latent",
        "steps": steps or base_steps,
        "steps_asked": steps,
        "denoising_strength": HIRES_STRENGTH if denoising_strength is None else denoising_strength,
        "sampler": sampler,
        "prompt": prompt or None,
        "negative_prompt": negative_prompt or None,
        "scale": scale,
        "resize_x": resize_x,
        "resize_y": resize_y,
    }
