"""How a loaded pipeline's models compute: attention kernels, batch-invariant rows, and
the latents the VAE decodes. Chosen per device by pipelines.tuning."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def unscale(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents as the VAE decodes them: denormalised, as StableDiffusionXLPipeline does."""
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return latents / vae.config.scaling_factor
    mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
    std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
    return latents * std / vae.config.scaling_factor + mean


def scale(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The VAE encoder's latents as the UNet sees them: unscale's inverse."""
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return latents * vae.config.scaling_factor
    mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
    std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
    return (latents - mean) * vae.config.scaling_factor / std


# Linears of the SDXL UNet that see one row per image: the time and text-time embedding
# MLPs and every ResNet block's projection of them (with any LoRA layers inside those).
_PER_IMAGE_LINEARS = ("time_embedding.", "add_embedding.", "time_emb_proj")
_MIN_ROWS = 8


def pad_per_image_linears(unet: Any) -> None:
    """Make the UNet's per-image Linears compute each row the same whatever the batch:
    below _MIN_ROWS rows, MKL's sgemm switches kernels and sums in another order."""
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or getattr(module, "_dr_padded", False):
            continue
        if any(part in name for part in _PER_IMAGE_LINEARS):
            padding = _RowPadding()
            module.register_forward_pre_hook(padding.before)
            module.register_forward_hook(padding.after)
            module._dr_padded = True


class _RowPadding:
    """Forward hooks: pad a 2-D input to _MIN_ROWS rows (repeating its last), then keep
    only the output rows of the real input."""

    def __init__(self) -> None:
        self.rows: list[int | None] = []

    def before(self, module: Any, args: tuple) -> tuple | None:
        sample, *rest = args
        if sample.dim() != 2 or sample.shape[0] >= _MIN_ROWS:
            self.rows.append(None)
            return None
        self.rows.append(sample.shape[0])
        filler = sample[-1:].expand(_MIN_ROWS - sample.shape[0], -1)
        return (torch.cat([sample, filler]), *rest)

    def after(self, module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        rows = self.rows.pop()
        return None if rows is None else output[:rows]


def use_sdpa(model: Any) -> None:
    """Make every attention layer use torch's scaled_dot_product_attention (diffusers'
    default with torch 2, unless something set another processor)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = model.attn_processors.values()
    if any(not isinstance(processor, AttnProcessor2_0) for processor in processors):
        model.set_attn_processor(AttnProcessor2_0())


@contextmanager
def unet_per_image(unet: Any, images: int) -> Iterator[None]:
    """While a batch of `images` denoises, call the UNet once per image on just its own rows
    (its unconditional and conditional pair under classifier-free guidance), so that every
    kernel sees the shapes it sees when the image renders alone: CPU kernels pick their
    blocking and split their work among threads by batch size, and a batched image came
    out one level off its lone render on a few pixels. On the CPU a batch gains little
    over its images one by one (pipelines.tuning); scripts/bench_batch_split.py measures
    what this costs (0.88x-0.95x of one call for the batch, with the tiny model)."""
    if images <= 1:
        yield
        return
    forward = unet.forward

    def per_image(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        rows = sample.shape[0]
        if rows % images:
            return forward(sample, *args, **kwargs)
        out = torch.empty_like(sample)
        for image in range(images):
            index = torch.arange(image, rows, images)  # row i, i + images, ...

            def pick(value: Any, index: torch.Tensor = index) -> Any:
                if isinstance(value, dict):
                    return {key: pick(one) for key, one in value.items()}
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
                    return value[index]
                return value

            result = forward(pick(sample), *map(pick, args), **pick(kwargs))
            out[index] = result[0] if isinstance(result, tuple) else result.sample
        return (out,) if not kwargs.get("return_dict", True) else type(result)(sample=out)

    own = unet.__dict__.get("forward")  # a hook's wrapper (accelerate's) to put back
    unet.forward = per_image
    try:
        yield
    finally:
        if own is None:
            del unet.forward
        else:
            unet.forward = own
