"""Test checkpoints: tiny SDXL-block models and their single files (built by
pipelines.checkpoint_export, which `darkroom tiny-model --single-file` uses too), and
header-only files of any size."""

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

__all__ = ["build_tiny_xl", "ldm_shapes", "to_single_file", "write_header_only"]


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
