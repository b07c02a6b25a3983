"""A tiny model of SDXL's block structure, and diffusers -> single file (LDM layout).

`build_tiny_xl(folder)` writes "tiny-xl-blocks", a diffusers SDXL pipeline with SDXL's
layout at tiny widths: three UNet levels (the first without attention, the others with
cross-attention transformers, the last two deep), a four-level VAE, a CLIP-L-shaped and an
OpenCLIP-bigG-shaped text encoder (hidden 64 and 128: diffusers tells the two apart by
width), CLIP's real 49408-token tokenizers. Its sizes follow the rules
pipelines.checkpoint_files infers configs by (64 channels per attention head).

`to_single_file(folder, path)` converts such a folder into the single-file (LDM) key layout
AUTOMATIC1111, ComfyUI and Civitai use: the reverse of diffusers' single_file_utils, as
diffusers' scripts/convert_diffusers_to_original_sdxl.py does it, generalised to any
number of levels and layers. `darkroom tiny-model --single-file` writes one (a CPU user's
AUTOMATIC1111-style checkpoint); the tests build their checkpoints with them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipelines.checkpoint_configs import HEAD_CHANNELS, SDXL_TIME_IDS
from pipelines.clip_vocab import PAD_TOKENS, write_clip_tokenizer
from pipelines.model_folders import checkpoint_dir, lora_dir
from pipelines.sdxl_configs import SDXL_BASE_CONFIGS, random_pipeline
from pipelines.tiny import ordinary_mode, write_lora

TINY_XL_NAME = "tiny-xl-blocks"
_CHANNELS = [32, 64, 128]
_TIME_DIM = 8
_POOLED = 64


def tiny_xl_configs() -> dict[str, dict[str, Any]]:
    base = SDXL_BASE_CONFIGS
    clip_l = {
        **base["text_encoder"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 1,
    }  # fmt: skip
    open_clip = {
        **base["text_encoder_2"], "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": _POOLED,
    }  # fmt: skip
    unet = {
        **base["unet"],
        "block_out_channels": _CHANNELS,
        "transformer_layers_per_block": [1, 1, 2],
        "attention_head_dim": [max(1, c // HEAD_CHANNELS) for c in _CHANNELS],
        "cross_attention_dim": 64 + 128,
        "addition_time_embed_dim": _TIME_DIM,
        "projection_class_embeddings_input_dim": SDXL_TIME_IDS * _TIME_DIM + _POOLED,
    }
    vae = {**base["vae"], "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": clip_l,
        "text_encoder_2": open_clip,
        "scheduler": dict(base["scheduler"]),
    }


def build_tiny_xl(folder: Path, seed: int = 1234) -> Path:
    """Write tiny-xl-blocks (random weights, float32) to `folder` as a diffusers pipeline."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        pipe = random_pipeline(tiny_xl_configs(), torch.float32, "cpu", seed=seed)
        # random_pipeline zeroes biases and sets norms to one: perturb every 1-D parameter,
        # so a converter that misplaced one would change the image.
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for model in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
                for param in model.parameters():
                    if param.dim() == 1:
                        param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        pipe.save_pretrained(folder, safe_serialization=True)
    for name, pad in PAD_TOKENS.items():
        shutil.rmtree(folder / name)
        write_clip_tokenizer(folder / name, pad_token=pad)
    return folder


# --- diffusers -> single file ------------------------------------------------------------------

_RESNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP = (
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
)


def _unet_prefixes(config: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet) for every block of the UNet."""
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    down_attn = [kind.startswith("CrossAttn") for kind in config["down_block_types"]]
    up_attn = [kind.startswith("CrossAttn") for kind in config["up_block_types"]]
    found: list[tuple[str, str, bool]] = []
    for i in range(levels):
        for j in range(layers):
            block = 1 + i * (layers + 1) + j
            found.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0.", True))
            if down_attn[i]:
                found.append(
                    (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1.", False)
                )
        if i < levels - 1:
            block = 1 + i * (layers + 1) + layers
            found.append(
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{block}.0.op.", False)
            )
        for j in range(layers + 1):
            block = i * (layers + 1) + j
            found.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0.", True))
            if up_attn[i]:
                found.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1.", False))
        if i < levels - 1:
            block = i * (layers + 1) + layers
            slot = 2 if up_attn[i] else 1
            found.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{block}.{slot}.", False))
    found.append(("mid_block.resnets.0.", "middle_block.0.", True))
    found.append(("mid_block.attentions.0.", "middle_block.1.", False))
    found.append(("mid_block.resnets.1.", "middle_block.2.", True))
    return found


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = None
        for old, ldm in _UNET_TOP:
            if key.startswith(old):
                new = ldm + key[len(old) :]
        for old, ldm, resnet in prefixes:
            if key.startswith(old):
                rest = key[len(old) :]
                if resnet:
                    for diffusers_name, ldm_name in _RESNET:
                        if rest.startswith(diffusers_name):
                            rest = ldm_name + rest[len(diffusers_name) :]
                new = ldm + rest
                break
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    renames: list[tuple[str, str]] = [
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for side in ("encoder", "decoder"):
        renames += [
            (f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."),
            (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."),
            (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."),
        ]
    for i in range(levels):
        renames.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        renames.append(
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        )
        up = levels - 1 - i
        renames.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{up}.block."))
        renames.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{up}.upsample."))
    attention = (
        ("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    )  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for old, ldm in renames:
            if new.startswith(old):
                new = ldm + new[len(old) :]
                break
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        if ".mid.attn_1." in new:
            head, _, rest = new.partition(".mid.attn_1.")
            for old, ldm in attention:
                if rest.startswith(old):
                    rest = ldm + rest[len(old) :]
            new = f"{head}.mid.attn_1.{rest}"
            if value.dim() == 2:  # LDM's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def clip_l_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith("text_model.") else "text_model." + key
        out["conditioner.embedders.0.transformer." + name] = value
    return out


def open_clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.1.model."
    state = {
        (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
        for k, v in state.items()
        if not k.endswith("position_ids")
    }
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = (
        ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj."),
    )  # fmt: skip
    layers = sorted(
        {int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")}
    )
    for key, value in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
    for index in layers:
        source = f"text_model.encoder.layers.{index}."
        target = f"{prefix}transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{source}self_attn.{part}_proj.{kind}"] for part in ("q", "k", "v")]
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(qkv)
        for key, value in state.items():
            if not key.startswith(source) or "self_attn." in key and "out_proj" not in key:
                continue
            rest = key[len(source) :]
            for old, ldm in layer_names:
                if rest.startswith(old):
                    out[target + ldm + rest[len(old) :]] = value
                    break
            else:
                raise KeyError(f"no OpenCLIP name for text encoder key {key}")
    return out


def _component_state(folder: Path, component: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in sorted((folder / component).glob("*.safetensors")):
        state.update(load_file(file))
    return state


def to_single_file(folder: Path, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Convert a diffusers SDXL folder into one single-file (LDM layout) .safetensors."""
    import json

    folder, path = Path(folder), Path(path)
    config = lambda name: json.loads((folder / name / "config.json").read_text())  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    state.update(unet_to_ldm(_component_state(folder, "unet"), config("unet")))
    state.update(vae_to_ldm(_component_state(folder, "vae"), config("vae")))
    state.update(clip_l_to_ldm(_component_state(folder, "text_encoder")))
    state.update(open_clip_to_ldm(_component_state(folder, "text_encoder_2")))
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"modelspec.architecture": "stable-diffusion-xl-v1-base", **(metadata or {})}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=info)
    return path


def build_tiny_single_file(
    models_dir: Path, loras: int = 2, seed: int = 1234, name: str = "tiny-xl"
) -> Path:
    """`darkroom tiny-model --single-file`: tiny-xl-blocks (weights from `seed`) as one
    AUTOMATIC1111-style `name.safetensors` in the checkpoint folder, and `loras`
    tiny-xl-lora-N LoRAs that fit it (the tiny model's do not)."""
    from diffusers import UNet2DConditionModel

    target = checkpoint_dir(models_dir) / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as staging:
        folder = build_tiny_xl(Path(staging) / "pipeline", seed=seed)
        built = to_single_file(folder, Path(staging) / target.name)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        for index in range(loras):
            write_lora(unet, lora_dir(models_dir), index, family="tiny-xl")
        ordinary_mode(built)
        os.replace(built, target)
    return target
