"""How a loaded pipeline's models compute: attention kernels, batch-invariant rows, and
the latents the VAE decodes. Chosen per device by pipelines.tuning."""

from __future__ import annotations

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
