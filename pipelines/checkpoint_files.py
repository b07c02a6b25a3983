"""What a checkpoint is, from its safetensors header or its diffusers configs (no torch).

`classify_checkpoint(path)` tells an SDXL base-family checkpoint (SDXL 1.0 and the models
fine-tuned from it: Pony, Illustrious, ...) and an SDXL inpainting one (the same UNet but
for its 9 input channels; usable for inpainting only) from everything Darkroom cannot
render, with a short reason. Only the header of a single file is read (pipelines.lora_files'
reader): tensor names and shapes say which networks it holds. The key names are those diffusers'
`single_file_utils.CHECKPOINT_KEY_NAMES` uses to infer a model type. An SDXL file is
compatible only if pipelines.checkpoint_configs can build its diffusers configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.checkpoint_configs import (
    CLIP_L_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    CheckpointError,
    context_dim,
    sdxl_configs_from_header,
)
from pipelines.lora_files import LoraFileError, LoraHeader, read_header

SINGLE_FILE = "single-file"
DIFFUSERS = "diffusers"
SDXL = "SDXL"
SDXL_INPAINTING = "SDXL inpainting"
# The latents, the repaint mask at latent size, the masked image's latents.
INPAINTING_CHANNELS = 9
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PICKLE_REASON = "a pickle checkpoint: pickle checkpoints can run arbitrary code, so they are never opened (convert it to .safetensors)"  # noqa: E501
REFINER_CLIP_PREFIX = "conditioner.embedders.0.model."


@dataclass(frozen=True)
class CheckpointInfo:
    """`base_model`: SDXL, SDXL refiner, SDXL inpainting, SD1, SD2, Flux, SD3, ... or
    unknown; `reason` is None exactly when `compatible`. A compatible SDXL inpainting
    checkpoint renders inpainting jobs only (`inpainting`)."""

    format: str  # "single-file" | "diffusers"
    base_model: str
    compatible: bool
    reason: str | None = None

    @property
    def inpainting(self) -> bool:
        return self.compatible and self.base_model == SDXL_INPAINTING


def _incompatible(fmt: str, base: str, reason: str) -> CheckpointInfo:
    return CheckpointInfo(fmt, base, False, reason)


def classify_checkpoint(path: Path) -> CheckpointInfo:
    """Classify a diffusers folder or a single-file checkpoint; never raises for bad files."""
    path = Path(path)
    if path.is_dir():
        return classify_diffusers_folder(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _incompatible(SINGLE_FILE, "unknown", PICKLE_REASON)
    if suffix != ".safetensors":
        return _incompatible(
            SINGLE_FILE, "unknown", f"not a checkpoint file ({suffix or path.name})"
        )
    try:
        header = read_header(path)
    except LoraFileError as exc:
        return _incompatible(SINGLE_FILE, "unknown", str(exc))
    except OSError as exc:
        return _incompatible(SINGLE_FILE, "unknown", f"unreadable: {exc.strerror or exc}")
    return classify_header(header)


def classify_header(header: LoraHeader) -> CheckpointInfo:
    shapes = header.shapes
    names = header.names

    def has_any(*needles: str) -> bool:
        return any(needle in name for name in names for needle in needles)

    if has_any("double_blocks.0.img_attn", "single_blocks.0.linear1"):
        return _incompatible(SINGLE_FILE, "Flux", "a Flux model, not SDXL")
    if has_any("joint_blocks.0.", "text_encoders.clip_g."):
        return _incompatible(SINGLE_FILE, "SD3", "a Stable Diffusion 3 model, not SDXL")
    if not any(name.startswith(UNET_PREFIX) for name in names):
        if has_any("lora_", ".lora.", "hada_", "lokr_"):
            return _incompatible(SINGLE_FILE, "unknown", "a LoRA, not a checkpoint")
        if any(name.startswith(("encoder.", "decoder.")) for name in names):
            return _incompatible(SINGLE_FILE, "unknown", "a VAE alone, not a checkpoint")
        return _incompatible(
            SINGLE_FILE, "unknown", "not a Stable Diffusion checkpoint: it has no UNet weights"
        )
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    in_channels = conv_in[1] if conv_in and len(conv_in) == 4 else None
    has_clip_l = CLIP_L_PREFIX + "embeddings.position_embedding.weight" in shapes
    has_open_clip = OPEN_CLIP_PREFIX + "positional_embedding" in shapes
    is_refiner_clip = REFINER_CLIP_PREFIX + "positional_embedding" in shapes
    if names and any(name.startswith("cond_stage_model.") for name in names):
        context = context_dim(shapes)
        base = "SD2" if context == 1024 or has_any("cond_stage_model.model.") else "SD1"
        if in_channels == 9:
            return _incompatible(SINGLE_FILE, base, f"a {base} inpainting model, not SDXL")
        version = "2.x" if base == "SD2" else "1.x"
        return _incompatible(SINGLE_FILE, base, f"a Stable Diffusion {version} model, not SDXL")
    if is_refiner_clip and not has_clip_l:
        return _incompatible(
            SINGLE_FILE, "SDXL refiner",
            "the SDXL refiner: it refines other models' images, it does not render from text",
        )  # fmt: skip
    if "edm_mean" in shapes or "edm_std" in shapes:
        return _incompatible(
            SINGLE_FILE, "Playground v2.5", "Playground v2.5: it needs EDM sampling"
        )
    if not (has_clip_l and has_open_clip):
        return _incompatible(SINGLE_FILE, "unknown", "not SDXL: it lacks SDXL's two text encoders")
    if in_channels not in (4, INPAINTING_CHANNELS):
        return _incompatible(
            SINGLE_FILE, "unknown",
            f"its UNet takes {in_channels} input channels, SDXL's 4 (or 9 for inpainting)",
        )  # fmt: skip
    base = SDXL if in_channels == 4 else SDXL_INPAINTING
    try:
        sdxl_configs_from_header(header)
    except CheckpointError as exc:
        return _incompatible(SINGLE_FILE, base, str(exc))
    return CheckpointInfo(SINGLE_FILE, base, True)


def classify_diffusers_folder(folder: Path) -> CheckpointInfo:
    try:
        index = _read_json(folder / "model_index.json")
    except (OSError, ValueError, RecursionError):
        return _incompatible(
            DIFFUSERS, "unknown", "not a diffusers model: no readable model_index.json"
        )
    pipeline = str(index.get("_class_name", ""))
    if "Flux" in pipeline:
        return _incompatible(DIFFUSERS, "Flux", "a Flux model, not SDXL")
    if "StableDiffusion3" in pipeline:
        return _incompatible(DIFFUSERS, "SD3", "a Stable Diffusion 3 model, not SDXL")
    try:
        unet = _read_json(folder / "unet" / "config.json")
    except (OSError, ValueError, RecursionError):
        return _incompatible(
            DIFFUSERS, "unknown", f"a {pipeline or 'diffusers'} model without a UNet config"
        )
    if pipeline in ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline"):
        base = "SD2" if unet.get("cross_attention_dim") == 1024 else "SD1"
        version = "2.x" if base == "SD2" else "1.x"
        return _incompatible(DIFFUSERS, base, f"a Stable Diffusion {version} model, not SDXL")
    if not pipeline.startswith("StableDiffusionXL"):
        return _incompatible(DIFFUSERS, "unknown", f"a {pipeline or 'unknown'} model, not SDXL")
    if not index.get("text_encoder") or index.get("text_encoder") == [None, None]:
        return _incompatible(
            DIFFUSERS, "SDXL refiner",
            "the SDXL refiner: it refines other models' images, it does not render from text",
        )  # fmt: skip
    channels = unet.get("in_channels")
    if channels not in (4, INPAINTING_CHANNELS) or unet.get("addition_embed_type") != "text_time":
        return _incompatible(DIFFUSERS, "unknown", "its UNet is not SDXL's text_time UNet")
    # An inpainting pipeline's folder with a 4-channel UNet is an ordinary SDXL model.
    return CheckpointInfo(DIFFUSERS, SDXL if channels == 4 else SDXL_INPAINTING, True)


def _read_json(path: Path) -> dict[str, Any]:
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value
