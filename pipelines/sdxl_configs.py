"""SDXL base 1.0's architecture, written out, and a full-size pipeline of random weights.

The configs are those of stabilityai/stable-diffusion-xl-base-1.0 (diffusers layout), so a
machine that can download nothing still runs the real shapes and FLOPs: enough to measure
speed and memory. Images from random weights are noise. Tokenizers are the tiny model's
(CLIP-style BPE, max length 77): their vocabulary is small but every id they produce is a
valid row of the full-size embedding tables, and a text encoder's cost does not depend on
which ids it reads.
"""

from __future__ import annotations

from typing import Any

RANDOM_SDXL = "random-sdxl"
_SEED = 20240602

UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# CLIP ViT-L/14's text tower.
TEXT_ENCODER: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# OpenCLIP ViT-bigG/14's text tower, with its projection.
TEXT_ENCODER_2: dict[str, Any] = {
    **TEXT_ENCODER,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

SDXL_BASE_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": UNET,
    "vae": VAE,
    "text_encoder": TEXT_ENCODER,
    "text_encoder_2": TEXT_ENCODER_2,
    "scheduler": SCHEDULER,
}


def empty_models(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The four networks of `configs`, their parameters on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # Buffers stay real: CLIP's position_ids could not be recovered from the meta device.
    with init_empty_weights(include_buffers=False):
        return {
            "unet": UNet2DConditionModel(**configs["unet"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig(**configs["text_encoder_2"])
            ),
        }


def random_pipeline(
    configs: dict[str, dict[str, Any]], dtype: Any, device: str, seed: int = _SEED
) -> Any:
    """A StableDiffusionXLPipeline of `configs` with random weights, made on `device` in
    `dtype` directly: no float32 copy on the CPU, no per-layer default initialisation."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from pipelines.tiny import clip_tokenizer

    models = empty_models(configs)
    generator = _generator(device, seed)
    for model in models.values():
        _materialise(model, dtype, torch.device(device), generator)
    return StableDiffusionXLPipeline(
        **models,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler.from_config(configs["scheduler"]),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_random_sdxl(dtype: Any, device: str) -> Any:
    """Full-size SDXL base 1.0 (2.6e9 UNet parameters) of random weights, in seconds on a
    GPU. `dtype` is a torch dtype."""
    return random_pipeline(SDXL_BASE_CONFIGS, dtype, device)


def _generator(device: str, seed: int) -> Any:
    import torch

    if device == "meta":
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _materialise(model: Any, dtype: Any, device: Any, generator: Any) -> None:
    import torch

    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    # nn.Module's own to(): diffusers' override warns about casting loaded weights.
    torch.nn.Module.to(model, dtype=dtype)  # on the meta device: free
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
        if device.type != "meta":
            for module in model.modules():
                _init_module(module, generator)
    model.eval()
    model.requires_grad_(False)


def _init_module(module: Any, generator: Any) -> None:
    """Weights that keep activations of order one through every layer: random weights of
    std 1/sqrt(fan_in), unit norms, zero biases."""
    import torch

    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    for name, param in module.named_parameters(recurse=False):
        if isinstance(module, norms):
            param.fill_(1.0 if name == "weight" else 0.0)
        elif param.dim() >= 2:
            fan_in = param[0].numel()
            param.normal_(0.0, fan_in**-0.5, generator=generator)
        else:
            param.zero_()
