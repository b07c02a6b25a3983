"""The diffusers configs of a single-file SDXL checkpoint, from its header (no torch).

`sdxl_configs_from_header(header)` writes out the configs of its UNet, VAE and text
encoders from its tensor shapes (channels, blocks, transformer depths, widths, layers),
SDXL base 1.0's values for what shapes cannot show; `write_config_folder` lays them out
with CLIP's tokenizers as a hub repo is laid out, so `from_single_file(..., config=folder)`
needs no network. pipelines.checkpoint_files classifies files with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipelines.lora_files import LoraHeader

# SDXL's text_time conditioning: 6 size/crop numbers, each embedded in
# addition_time_embed_dim, beside the pooled text embedding (2816 = 6 * 256 + 1280).
SDXL_TIME_IDS = 6
# Attention heads are not visible in shapes: SDXL (UNet and both CLIPs) uses 64 channels each.
HEAD_CHANNELS = 64

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


class CheckpointError(Exception):
    """The header does not describe a checkpoint Darkroom can build configs for."""



def context_dim(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for name, shape in shapes.items():
        if name.startswith(UNET_PREFIX) and name.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return None


def _indices(shapes: dict[str, tuple[int, ...]], prefix: str) -> list[int]:
    """The numbers n of the tensors named prefix + "n." + anything, sorted."""
    found = set()
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    for name in shapes:
        match = pattern.match(name)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def _shape(
    shapes: dict[str, tuple[int, ...]], name: str, dims: int | None = None
) -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None:
        raise CheckpointError(f"damaged or not SDXL: tensor {name} is missing")
    if dims is not None and len(shape) != dims:
        raise CheckpointError(f"damaged or not SDXL: {name} has shape {list(shape)}")
    return shape


def _heads(channels: int) -> int:
    return max(1, channels // HEAD_CHANNELS)


def sdxl_configs_from_header(header: LoraHeader) -> dict[str, dict[str, Any]]:
    """Diffusers configs (unet, vae, text_encoder, text_encoder_2, scheduler) of a single-file
    SDXL checkpoint, sized by its tensor shapes. Raises CheckpointError when a tensor the
    configs depend on is missing or malformed."""
    from pipelines.sdxl_configs import SDXL_BASE_CONFIGS

    shapes = header.shapes
    text_encoder = _clip_l_config(shapes, SDXL_BASE_CONFIGS["text_encoder"])
    text_encoder_2 = _open_clip_config(shapes, SDXL_BASE_CONFIGS["text_encoder_2"])
    unet = _unet_config(shapes, SDXL_BASE_CONFIGS["unet"], text_encoder_2["projection_dim"])
    return {
        "unet": unet,
        "vae": _vae_config(shapes, SDXL_BASE_CONFIGS["vae"]),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "scheduler": dict(SDXL_BASE_CONFIGS["scheduler"]),
    }


def _unet_config(
    shapes: dict[str, tuple[int, ...]], base: dict[str, Any], pooled_dim: int
) -> dict[str, Any]:
    p = UNET_PREFIX
    conv_in = _shape(shapes, p + "input_blocks.0.0.weight", 4)
    conv_out = _shape(shapes, p + "out.2.weight", 4)
    blocks = _indices(shapes, p + "input_blocks.")
    downsamplers = [i for i in blocks if p + f"input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downsamplers) + 1
    # conv_in, then per level `layers` resnets and a downsampler (none on the last level)
    layers, rest = divmod(len(blocks) - levels, levels)
    per_level = layers + 1
    regular = [per_level * (i + 1) for i in range(levels - 1)]
    if blocks != list(range(len(blocks))) or rest or layers < 1 or downsamplers != regular:
        raise CheckpointError("damaged or not SDXL: its UNet's down blocks are not regular")
    channels: list[int] = []
    depths: list[int] = []
    for level in range(levels):
        first = 1 + level * per_level
        resnet = _shape(shapes, p + f"input_blocks.{first}.0.out_layers.3.weight", 4)
        channels.append(resnet[0])
        depths.append(len(_indices(shapes, p + f"input_blocks.{first}.1.transformer_blocks.")))
    attention = [depth > 0 for depth in depths]
    if not any(attention):
        raise CheckpointError("not SDXL: its UNet has no cross-attention")
    to_k = next(
        shape for name, shape in shapes.items()
        if name.startswith(p) and name.endswith("attn2.to_k.weight")
    )  # fmt: skip
    proj_in = next(
        shape for name, shape in shapes.items()
        if name.startswith(p) and name.endswith(".proj_in.weight")
    )  # fmt: skip
    adm = _shape(shapes, p + "label_emb.0.0.weight", 2)[1]
    time_dims, rest = divmod(adm - pooled_dim, SDXL_TIME_IDS)
    if rest or time_dims <= 0:
        raise CheckpointError(
            f"not SDXL base: its UNet's {adm} conditioning inputs are not 6 time ids and the"
            f" {pooled_dim} pooled text dims"
        )
    mid_depth = len(_indices(shapes, p + "middle_block.1.transformer_blocks."))
    # diffusers gives the mid block the last level's depth; SDXL's are equal (10).
    if attention[-1] and mid_depth != depths[-1]:
        raise CheckpointError("its UNet's middle block is deeper than its last level")
    return {
        **base,
        "in_channels": conv_in[1],
        "out_channels": conv_out[0],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": [
            "CrossAttnDownBlock2D" if attn else "DownBlock2D" for attn in attention
        ],
        "up_block_types": [
            "CrossAttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(attention)
        ],
        "transformer_layers_per_block": [max(depth, 1) for depth in depths],
        "attention_head_dim": [_heads(channel) for channel in channels],
        "cross_attention_dim": to_k[1],
        "use_linear_projection": len(proj_in) == 2,
        "addition_time_embed_dim": time_dims,
        "projection_class_embeddings_input_dim": adm,
    }


def _vae_config(shapes: dict[str, tuple[int, ...]], base: dict[str, Any]) -> dict[str, Any]:
    p = VAE_PREFIX
    levels = _indices(shapes, p + "encoder.down.")
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError("damaged or not SDXL: it has no VAE (first_stage_model.*)")
    channels = [
        _shape(shapes, p + f"encoder.down.{level}.block.0.conv2.weight", 4)[0] for level in levels
    ]
    latent = _shape(shapes, p + "encoder.conv_out.weight", 4)[0] // 2
    return {
        **base,
        "in_channels": _shape(shapes, p + "encoder.conv_in.weight", 4)[1],
        "out_channels": _shape(shapes, p + "decoder.conv_out.weight", 4)[0],
        "block_out_channels": channels,
        "layers_per_block": len(_indices(shapes, p + "encoder.down.0.block.")),
        "latent_channels": latent,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
    }


def _clip_l_config(shapes: dict[str, tuple[int, ...]], base: dict[str, Any]) -> dict[str, Any]:
    p = CLIP_L_PREFIX
    vocab, hidden = _shape(shapes, p + "embeddings.token_embedding.weight", 2)
    positions = _shape(shapes, p + "embeddings.position_embedding.weight", 2)[0]
    layers = _indices(shapes, p + "encoder.layers.")
    if not layers:
        raise CheckpointError("damaged or not SDXL: its CLIP text encoder has no layers")
    return {
        **base,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "max_position_embeddings": positions,
        "num_hidden_layers": len(layers),
        "intermediate_size": _shape(shapes, p + "encoder.layers.0.mlp.fc1.weight", 2)[0],
        "num_attention_heads": _heads(hidden),
    }


def _open_clip_config(shapes: dict[str, tuple[int, ...]], base: dict[str, Any]) -> dict[str, Any]:
    p = OPEN_CLIP_PREFIX
    vocab, hidden = _shape(shapes, p + "token_embedding.weight", 2)
    positions = _shape(shapes, p + "positional_embedding", 2)[0]
    layers = _indices(shapes, p + "transformer.resblocks.")
    if not layers:
        raise CheckpointError("damaged or not SDXL: its OpenCLIP text encoder has no layers")
    projection = _shape(shapes, p + "text_projection", 2)
    return {
        **base,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "max_position_embeddings": positions,
        "num_hidden_layers": len(layers),
        "intermediate_size": _shape(shapes, p + "transformer.resblocks.0.mlp.c_fc.weight", 2)[0],
        "num_attention_heads": _heads(hidden),
        "projection_dim": projection[1],
    }


# --- the config folder ------------------------------------------------------------------------

_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_CLASS_NAMES = {
    "unet": "UNet2DConditionModel",
    "vae": "AutoencoderKL",
    "text_encoder": "CLIPTextModel",
    "text_encoder_2": "CLIPTextModelWithProjection",
    "scheduler": "EulerDiscreteScheduler",
}


def write_config_folder(configs: dict[str, dict[str, Any]], folder: Path) -> Path:
    """Lay `configs` out as the hub's SDXL repo is (model_index.json, <component>/config.json,
    scheduler/scheduler_config.json, tokenizer/ and tokenizer_2/ with CLIP's vocabulary),
    without weights: what `from_single_file(..., config=folder)` reads."""
    from pipelines.clip_vocab import PAD_TOKENS, write_clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(_MODEL_INDEX, indent=2), encoding="utf-8")
    for component, config in configs.items():
        (folder / component).mkdir(exist_ok=True)
        name = "scheduler_config.json" if component == "scheduler" else "config.json"
        body = {"_class_name": _CLASS_NAMES[component], **config}
        if component.startswith("text_encoder"):
            body["architectures"] = [_CLASS_NAMES[component]]
            body["model_type"] = "clip_text_model"
        (folder / component / name).write_text(json.dumps(body, indent=2), encoding="utf-8")
    for tokenizer, pad in PAD_TOKENS.items():
        positions = configs.get("text_encoder", {}).get("max_position_embeddings", 77)
        write_clip_tokenizer(folder / tokenizer, pad_token=pad, max_length=positions)
    return folder
