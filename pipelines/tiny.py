"""A tiny, randomly initialised SDXL-shaped pipeline and LoRAs for it, built offline.

Images from it are structured noise, but every code path of a real SDXL render runs:
two CLIP text encoders, a text_time UNet, a VAE with SDXL's downscale factor of 8, LoRAs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines.model_folders import checkpoint_dir, lora_dir

TINY_MODEL_NAME = "tiny-sdxl"
LORA_RANK = 4
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Chosen so one LoRA at weight 1 moves a 256x256, 10-step image by several pixel levels.
LORA_B_STD = 0.5

_SEED = 20240601
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
# A handful of merges so common words become single tokens, like a real CLIP BPE.
_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("i", "n"),
    ("o", "f</w>"),
    ("e", "r</w>"),
    ("o", "n</w>"),
    ("a", "t</w>"),
    ("i", "s</w>"),
)
_LORA_STYLES = (
    ("Tiny Ink", "ink", "Thin black linework with flat washes.", ["ink", "lineart"]),
    ("Tiny Neon", "neon", "Glowing saturated neon lighting at night.", ["neon", "night"]),
    ("Tiny Pastel", "pastel", "Soft pastel palette, low contrast.", ["pastel", "soft"]),
    ("Tiny Film", "film", "Grainy analog film look with warm tones.", ["film", "grain"]),
)


def tiny_model_dir(models_dir: Path, name: str = TINY_MODEL_NAME) -> Path:
    """Where the tiny model lives: `checkpoints/`, or `Stable-diffusion/` in an
    AUTOMATIC1111 models folder (building it must not add Darkroom's folders there)."""
    return checkpoint_dir(Path(models_dir)) / name


def ensure_tiny_model(models_dir: Path) -> Path:
    """The tiny model's folder, building it (and its LoRAs) first if it is not complete."""
    target = tiny_model_dir(models_dir)
    if (target / "model_index.json").is_file():
        return target
    return build_tiny_model(models_dir)


def build_tiny_model(
    models_dir: Path,
    loras: int = 2,
    *,
    seed: int = _SEED,
    name: str = TINY_MODEL_NAME,
) -> Path:
    """Write the tiny pipeline (weights drawn from `seed`) to the checkpoint folder as
    `name`, and `loras` LoRAs for it into the LoRA folder (their weights do not depend on
    the seed: every tiny model takes them)."""
    import torch

    models_dir = Path(models_dir)
    target = tiny_model_dir(models_dir, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _tiny_pipeline()
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            pipe.save_pretrained(staging, safe_serialization=True)
            for tokenizer_folder in ("tokenizer", "tokenizer_2"):
                _write_slow_tokenizer_files(staging / tokenizer_folder)
            _add_sdxl_scheduler_keys(staging / "scheduler" / "scheduler_config.json")
            ordinary_mode(staging)
            # LoRAs first: the model's model_index.json is what marks the build complete.
            for index in range(loras):
                write_lora(pipe.unet, lora_dir(models_dir), index)
            _replace_dir(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ordinary_mode(top: Path) -> None:
    """rw-r--r-- / rwxr-xr-x (under the usual umask) for `top` and all under it: temp
    folders and the files transformers writes are private (0700/0600), which would keep
    other users and containers from reading the models."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(staging: Path, target: Path) -> None:
    """Put the finished build in place of whatever is there (a crash leftover, an old build)."""
    previous: Path | None = None
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        target.rename(previous / target.name)
    try:
        staging.rename(target)
    except OSError:
        # Another process finished the same (deterministic) build first.
        if not (target / "model_index.json").is_file():
            raise
    finally:
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(f"{char}</w>" for char in alphabet)]
    tokens += [left + right for left, right in _MERGES]
    tokens += [_BOS, _EOS]
    return {token: index for index, token in enumerate(tokens)}, list(_MERGES)


def clip_tokenizer() -> Any:
    """A CLIP tokenizer (max length 77) with a small byte-level BPE vocabulary, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=77,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_EOS,
        unk_token=_EOS,
    )


def _write_slow_tokenizer_files(folder: Path) -> None:
    # transformers 5 only saves tokenizer.json; older versions' CLIPTokenizer needs these two.
    vocab, merges = _clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = "".join(f"{left} {right}\n" for left, right in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merge_lines, encoding="utf-8")


def _add_sdxl_scheduler_keys(config_path: Path) -> None:
    # SDXL base ships these keys for DDIM/PNDM; diffusers keeps them as hidden config on the
    # Euler scheduler, so swapping samplers behaves as it does with the real model.
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(
        clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0
    )
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _tiny_pipeline() -> Any:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # Shapes follow diffusers' own SDXL test dummies; 80 = 6 time ids * 8 + 32 pooled dims.
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
    )
    # Four blocks give SDXL's real factor of 8, so pixel sizes behave like the real model.
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        norm_num_groups=8,
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=256,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    tokenizer = clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        max_position_embeddings=77,
        layer_norm_eps=1e-05,
        hidden_act="gelu",
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def write_lora(
    unet: Any, loras_dir: Path, index: int, rank: int = LORA_RANK, family: str = "tiny"
) -> Path:
    """A random PEFT-layout LoRA of `rank` on the attention projections of any SDXL-shaped
    `unet` (one already wrapped by PEFT adapters too), named <family>-lora-<index>."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    generator = torch.Generator().manual_seed(_SEED + 1 + index)
    layers: dict[str, torch.Tensor] = {}
    for module_name, module in unet.named_modules():
        module_name = module_name.removesuffix(".base_layer")
        if not isinstance(module, torch.nn.Linear) or ".lora_" in module_name:
            continue
        if not any(module_name.endswith(f".{target}") for target in LORA_TARGETS):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) / rank
        up = torch.randn(module.out_features, rank, generator=generator) * LORA_B_STD
        layers[f"{module_name}.lora_A.weight"] = down
        layers[f"{module_name}.lora_B.weight"] = up
    metadata = {"r": rank, "lora_alpha": rank, "target_modules": list(LORA_TARGETS)}

    loras_dir.mkdir(parents=True, exist_ok=True)
    name = f"{family}-lora-{index}"
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=loras_dir) as staging:
        StableDiffusionXLPipeline.save_lora_weights(
            staging,
            unet_lora_layers=layers,
            weight_name=f"{name}.safetensors",
            unet_lora_adapter_metadata=metadata,
        )
        # The sidecar goes first so a catalog never sees the weights without their metadata.
        sidecar = json.dumps(_lora_sidecar(index, family), indent=2) + "\n"
        (loras_dir / f"{name}.json").write_text(sidecar, encoding="utf-8")
        ordinary_mode(Path(staging) / f"{name}.safetensors")
        os.replace(Path(staging) / f"{name}.safetensors", loras_dir / f"{name}.safetensors")
    return loras_dir / f"{name}.safetensors"


def _lora_sidecar(index: int, family: str = "tiny") -> dict[str, Any]:
    title, personality, description, tags = _LORA_STYLES[index % len(_LORA_STYLES)]
    round_ = index // len(_LORA_STYLES)
    suffix = f" {round_ + 1}" if round_ else ""
    if family != "tiny":
        title = f"{title} ({family})"
    return {
        "name": f"{title}{suffix}",
        "type": "style",
        "personality": f"{personality}{suffix}",
        "description": description if not round_ else f"{description} Variant {round_ + 1}.",
        "tags": [*tags, "tiny", "test"],
        "url": "",
    }
