"""Test checkpoints: tiny SDXL-block models and their single files (built by
pipelines.checkpoint_export, which `darkroom tiny-model --single-file` uses too), a tiny
SDXL inpainting model made from one, and header-only files of any size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipelines.checkpoint_export import (
    build_tiny_xl,
    clip_l_to_ldm,
    open_clip_to_ldm,
    to_single_file,
    unet_to_ldm,
    vae_to_ldm,
)

__all__ = [
    "build_tiny_xl",
    "build_tiny_xl_inpainting",
    "ldm_shapes",
    "to_single_file",
    "write_header_only",
]


# --- an SDXL inpainting model ---------------------------------------------------------------------


def build_tiny_xl_inpainting(folder: Path, seed: int = 1234, extra: float = 1.0) -> Path:
    """tiny-xl-blocks of `seed` as an SDXL inpainting model (a diffusers folder, as
    diffusers/stable-diffusion-xl-1.0-inpainting-0.1 is laid out): its UNet's conv_in takes
    9 channels, the first 4 tiny-xl-blocks' own weights, the 5 of the mask and the masked
    image's latents random, scaled by `extra` (0: the model renders as tiny-xl-blocks
    does). Every other weight is tiny-xl-blocks'."""
    import json

    from diffusers import UNet2DConditionModel

    folder = build_tiny_xl(Path(folder), seed=seed)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    old = unet.conv_in
    conv = torch.nn.Conv2d(9, old.out_channels, old.kernel_size, padding=old.padding)
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        conv.weight.mul_(old.weight.std() * extra)
        conv.weight[:, :4] = old.weight
        conv.bias.copy_(old.bias)
    unet.conv_in = conv
    unet.register_to_config(in_channels=9)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(_class_name="StableDiffusionXLInpaintPipeline", requires_aesthetics_score=False)
    index_path.write_text(json.dumps(index, indent=2))
    return folder


# --- header-only files ---------------------------------------------------------------------------


def write_header_only(
    path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None
) -> Path:
    """A safetensors file with this header and zero weights, sparse on disk: what a
    checkpoint of any size looks like to code that reads only headers."""
    import json
    import math
    import struct

    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {
            "dtype": "F16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with Path(path).open("wb") as file:
        file.write(struct.pack("<Q", len(raw)))
        file.write(raw)
        file.truncate(8 + len(raw) + offset)
    return Path(path)


def ldm_shapes(configs: dict[str, dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    """The single-file tensor names and shapes of an SDXL pipeline of `configs` (built on the
    meta device: a full-size SDXL costs no memory)."""
    from pipelines.sdxl_configs import empty_models

    models = empty_models(configs)
    state: dict[str, torch.Tensor] = {}
    state.update(unet_to_ldm(models["unet"].state_dict(), configs["unet"]))
    state.update(vae_to_ldm(models["vae"].state_dict(), configs["vae"]))
    state.update(clip_l_to_ldm(models["text_encoder"].state_dict()))
    state.update(open_clip_to_ldm(models["text_encoder_2"].state_dict()))
    return {name: tuple(tensor.shape) for name, tensor in state.items()}
