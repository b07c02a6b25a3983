"""SDXL inpainting checkpoints: a UNet with 9 input channels, fed as diffusers'
StableDiffusionXLInpaintPipeline feeds it: each step's (scaled) latents, then the repaint
mask downsampled to latent size (nearest), then the latents of the init image with the
repaint pixels set to grey (0 in [-1, 1]). The mask is binary at full size (>= 0.5 repaints),
as diffusers' mask processor makes it. The extra channels are concatenated by a forward
pre-hook on the loaded UNet while pipelines.img2img's loop denoises, so these models render
with the same loop, samplers, strength and A1111 semantics as the base model's inpainting,
on the same loaded weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.checkpoint_files import INPAINTING_CHANNELS
from pipelines.spec import GenerationSpec


class InpaintingOnly(ValueError):
    """A job without a mask reached an inpainting model (the server refuses these first)."""


def takes_mask(unet: Any) -> bool:
    return unet.config.in_channels == INPAINTING_CHANNELS


def check_spec(unet: Any, spec: GenerationSpec) -> None:
    """An inpainting UNet renders an inpainting, and no hires fix of it (a second pass
    over the whole picture has no mask to give it)."""
    masked = spec.image is not None and spec.image.mask is not None
    if takes_mask(unet) and (not masked or spec.hires is not None):
        raise InpaintingOnly(
            "an SDXL inpainting model (9 input channels) renders only inpainting jobs (with a"
            " mask, without a hires fix)"
        )


def masked_pixels(pipe: Any, image: Image.Image, mask: Image.Image) -> tuple[Any, Any]:
    """The image in [-1, 1] with its repaint pixels 0, and the binary mask (1, 1, H, W)."""
    pixels = pipe.image_processor.preprocess(image)
    weights = np.asarray(mask.convert("L"), dtype=np.float32) / 255
    binary = torch.from_numpy(weights >= 0.5)[None, None].to(pixels.dtype)
    return pixels * (1 - binary), binary


def conditioning(binary: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
    """The 5 channels after the latents: the mask at latent size, the masked image's latents."""
    small = torch.nn.functional.interpolate(binary, size=masked_latents.shape[-2:])
    return torch.cat([small.to(masked_latents), masked_latents], dim=1)


class _ExtraChannels:
    """The forward pre-hook of an inpainting UNet: `rows` (one per image) appended after
    its sample's channels. Under classifier-free guidance the sample holds the images
    twice (unconditional, then conditional, in the same order), and so does what is
    appended. One per UNet, installed once, so a compiled UNet sees the same hook on
    every render."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.rows is None:
            raise InpaintingOnly("an SDXL inpainting UNet was called without its mask")
        sample = args[0] if args else kwargs["sample"]
        rows = self.rows.to(sample.device, sample.dtype)
        rows = rows.repeat(sample.shape[0] // rows.shape[0], 1, 1, 1)
        sample = torch.cat([sample, rows], dim=1)
        if args:
            return (sample, *args[1:]), kwargs
        return args, {**kwargs, "sample": sample}


@contextmanager
def conditioned(unet: Any, extra: torch.Tensor) -> Iterator[None]:
    """While inside, every call of the inpainting `unet` gets `extra` (one row per image,
    from `conditioning`) after its sample's channels."""
    hook = unet.__dict__.get("_darkroom_extra_channels")
    if hook is None:
        hook = _ExtraChannels()
        unet.register_forward_pre_hook(hook, with_kwargs=True)
        unet.__dict__["_darkroom_extra_channels"] = hook
    hook.rows = extra
    try:
        yield
    finally:
        hook.rows = None
