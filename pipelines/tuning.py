"""Which speed settings a renderer uses on which device, decided in one pure function so
that the CUDA choices can be checked on a machine without CUDA.

Importing this module must not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Above the API's largest image (2048x2048): by default the VAE never tiles. Tiled decoding
# blends overlapping tiles, which can leave faint seams, so only short memory justifies it.
VAE_TILING_ABOVE = 2048 * 2048
# Offloading says GPU memory is short: tile everything larger than SDXL's native size.
OFFLOAD_VAE_TILING_ABOVE = 1024 * 1024


@dataclass(frozen=True)
class DevicePlan:
    """How SDXLRenderer places and runs the pipeline.

    offload: enable_model_cpu_offload (each model moves to the GPU only while it runs)
        instead of keeping the whole pipeline on the device.
    channels_last: UNet and VAE in channels_last memory format (faster convolutions on
        CUDA tensor cores).
    compile: torch.compile the UNet and the VAE decoder once, after loading, with
        `compile_backend`.
    lora_hotswap: LoRA stacks are merged into the UNet's weights in place
        (pipelines.lora_hotswap), so switching them never changes the compiled UNet's
        structure and never recompiles it.
    vae_float32: keep a VAE whose config says force_upcast in float32; it only decodes,
        so only the decode runs in float32 (the SDXL VAE overflows in float16).
    vae_tiling_above: decode images of more pixels than this in tiles.
    batch_invariant: a batch's UNet runs once per image on that image's rows
        (pipelines.placement.unet_per_image), so every kernel sees the shapes of a lone
        render and a batched image is bit-exact with it; and the UNet's per-image Linear
        inputs (its time embeddings: one row per image) are padded to 8 rows, as they
        always were (MKL's sgemm picks its kernel by row count: 1, 2-3, 4+), so pixels
        stay those of earlier versions. CPU only, and not compiled: on CUDA batching is
        the speed, and an image in a batch may differ from its lone render by rounding.
    max_batch: how many queued jobs of one shape the server renders as one batch unless
        told otherwise. 4 on CUDA: an H200 rendered SDXL at 1024 px 1.65x faster per image
        in batches of 2 and 1.71x in batches of 4 (one image leaves it underused). 1 on
        the CPU, which one image saturates (batches of 4 measured 0.9x), and with offload.
    cpu_threads: torch's intra-op threads. One core is left to the HTTP event loop: when
        every core runs a render thread, each request the server answers preempts one of
        them and the others spin at OpenMP's barrier (a 256 px render measured 40x slower
        on 2 cores while polled 20 times a second).
    attention: "sdpa": torch's scaled_dot_product_attention (flash / memory-efficient
        kernels on CUDA), diffusers' default processor with torch 2.
    """

    device: str
    dtype: str
    offload: bool
    channels_last: bool
    compile: bool
    compile_backend: str
    lora_hotswap: bool
    vae_float32: bool
    vae_tiling_above: int
    batch_invariant: bool
    max_batch: int = 1
    cpu_threads: int = 1
    attention: str = "sdpa"


def plan_for(
    device: str,
    dtype: str,
    compile: bool = False,
    offload: bool = False,
    lora_hotswap: bool | None = None,
    vae_tiling_above: int | None = None,
    cpu_threads: int | None = None,
    cores: int | None = None,
) -> DevicePlan:
    """The settings for `device` ("cuda", "cuda:1", "cpu", "mps") and a resolved dtype
    name. offload only exists on CUDA and excludes compile (the offload hooks move weights
    inside the forward pass). lora_hotswap=None means: merge LoRAs into the weights when
    compiled or on CUDA without offload (an H200 rendered SDXL with one PEFT adapter 1.8x
    slower than without), PEFT adapters elsewhere (bit-exact with diffusers' own LoRA
    loading); compile with lora_hotswap=False works, but every LoRA change recompiles."""
    cuda = device.split(":")[0] == "cuda"
    offload = offload and cuda
    compile = compile and not offload
    if vae_tiling_above is None:
        vae_tiling_above = OFFLOAD_VAE_TILING_ABOVE if offload else VAE_TILING_ABOVE
    return DevicePlan(
        device=device,
        dtype=dtype,
        offload=offload,
        channels_last=cuda,
        compile=compile,
        compile_backend="inductor",
        lora_hotswap=(compile or (cuda and not offload)) if lora_hotswap is None else lora_hotswap,
        vae_float32=dtype == "float16",
        vae_tiling_above=vae_tiling_above,
        batch_invariant=device == "cpu" and not compile,
        max_batch=4 if cuda and not offload else 1,
        cpu_threads=cpu_threads or max(1, (cores or available_cores()) - 1),
    )


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
