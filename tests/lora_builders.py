"""LoRA files as self-hosters bring them, built by hand for the tiny model: kohya layout
with text-encoder layers and ss_* metadata, LoRAs for other base models, broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.lora_files import read_header

TE_FOLDERS = {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
# What kohya trains in a CLIP layer; diffusers needs out_proj to recognise the layout.
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def tiny_layers(models_dir: Path, folder: str, suffixes: tuple[str, ...]) -> dict[str, tuple]:
    """module name -> (in, out) of the tiny model's Linear layers ending in `suffixes`."""
    weights = next((models_dir / "checkpoints" / "tiny-sdxl" / folder).glob("*.safetensors"))
    layers = {}
    for key, shape in read_header(weights).shapes.items():
        module = key.removesuffix(".weight").removeprefix("text_model.")
        if key.endswith(".weight") and len(shape) == 2 and module.endswith(suffixes):
            layers[module] = (shape[1], shape[0])
    return layers


def kohya_lora(
    models_dir: Path,
    path: Path,
    *,
    seed: int,
    rank: int = 8,
    alpha: float = 4.0,
    unet_targets: tuple[str, ...] = ("attn2.to_k", "attn2.to_v", "attn1.to_q"),
    text_encoders: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A kohya-layout LoRA (lora_unet_*/lora_te1_*/lora_te2_*, lora_down/lora_up, alpha),
    as AUTOMATIC1111 and ComfyUI users have them."""
    generator = torch.Generator().manual_seed(seed)
    parts = {"lora_unet_": tiny_layers(models_dir, "unet", unet_targets)}
    if text_encoders:
        for prefix, folder in TE_FOLDERS.items():
            layers = tiny_layers(models_dir, folder, TE_TARGETS)
            parts[prefix] = {
                f"text_model.{name}": dims
                for name, dims in layers.items()
                if name.startswith(("encoder.layers.0.", "encoder.layers.1."))
            }
    tensors: dict[str, torch.Tensor] = {}
    for prefix, layers in parts.items():
        for module, (fan_in, fan_out) in layers.items():
            name = prefix + module.replace(".", "_")
            down = torch.randn(rank, fan_in, generator=generator) / rank
            tensors[f"{name}.lora_down.weight"] = down
            tensors[f"{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator)
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    return _save(tensors, path, metadata)


def kohya_metadata(name: str, tags: dict[str, int]) -> dict[str, str]:
    return {
        "ss_output_name": name,
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_network_dim": "8",
        "ss_network_alpha": "4.0",
        "ss_network_module": "networks.lora",
        "ss_tag_frequency": json.dumps({"10_style": tags}),
    }


def sd15_lora(path: Path) -> Path:
    """An SD 1.5 LoRA in kohya layout: SD1.5's layer names and its 768-wide context."""
    pairs = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (768, 320),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v": (768, 1280),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": (1280, 1280),
    }
    for proj in TE_TARGETS:
        fan_in, fan_out = {"fc1": (768, 3072), "fc2": (3072, 768)}.get(proj, (768, 768))
        kind = "mlp" if proj.startswith("fc") else "self_attn"
        pairs[f"lora_te_text_model_encoder_layers_0_{kind}_{proj}"] = (fan_in, fan_out)
    tensors = {}
    for name, (fan_in, fan_out) in pairs.items():
        tensors[f"{name}.lora_down.weight"] = torch.zeros(4, fan_in)
        tensors[f"{name}.lora_up.weight"] = torch.zeros(fan_out, 4)
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    return _save(tensors, path, {"ss_base_model_version": "sd_v1"})


def real_sdxl_lora(path: Path) -> Path:
    """A LoRA for the real SDXL: layer names the tiny model has, with SDXL's widths."""
    pairs = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (2048, 640),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (640, 640),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": (1280, 1280),
    }
    tensors = {}
    for module, (fan_in, fan_out) in pairs.items():
        tensors[f"{module}.lora_A.weight"] = torch.zeros(4, fan_in)
        tensors[f"{module}.lora_B.weight"] = torch.zeros(fan_out, 4)
    return _save(tensors, path)


def loha_lora(path: Path) -> Path:
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{name}.hada_{w}": torch.zeros(4, 64) for w in ("w1_b", "w2_b")}
    tensors |= {f"{name}.hada_{w}": torch.zeros(64, 4) for w in ("w1_a", "w2_a")}
    return _save(tensors | {f"{name}.alpha": torch.tensor(4.0)}, path)


def embedding(path: Path) -> Path:
    return _save({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, path)


def truncated(source: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"<html>403 Forbidden</html> (a download that went wrong)")
    return path


def copy(source: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    return path


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path
