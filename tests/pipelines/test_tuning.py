"""Device plans, the CUDA-path settings as far as a CPU can check them, full-size SDXL
configs, and torch.compile."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.sdxl import SDXLRenderer
from pipelines.sdxl_configs import SDXL_BASE_CONFIGS, build_random_sdxl, empty_models
from pipelines.sdxl_configs import random_pipeline as random_sdxl_pipeline
from pipelines.spec import GenerationSpec, LoraSpec
from pipelines.tiny import tiny_model_dir
from pipelines.tuning import OFFLOAD_VAE_TILING_ABOVE, VAE_TILING_ABOVE, DevicePlan, plan_for

ROOT = Path(__file__).resolve().parents[2]
SPEC = GenerationSpec("a lighthouse at dusk", "", 64, 64, 2, 5.0, "euler", (7,))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# --- plans


def test_cuda_plan_in_bfloat16() -> None:
    plan = plan_for("cuda", "bfloat16")
    assert plan == DevicePlan(
        device="cuda", dtype="bfloat16", offload=False, channels_last=True, compile=False,
        compile_backend="inductor", lora_hotswap=True, vae_float32=False,
        vae_tiling_above=VAE_TILING_ABOVE, batch_invariant=False, max_batch=4,
        attention="sdpa",
    )  # fmt: skip
    assert not plan_for("cpu", "float32").lora_hotswap  # PEFT adapters: exact
    assert plan_for("cpu", "float32").max_batch == 1
    assert plan_for("cuda", "bfloat16", offload=True).max_batch == 1
    compiled = plan_for("cuda:1", "bfloat16", compile=True)
    assert compiled.compile and compiled.lora_hotswap and compiled.channels_last
    assert not plan_for("cuda", "bfloat16", compile=True, lora_hotswap=False).lora_hotswap


def test_cuda_plan_in_float16_keeps_the_vae_in_float32() -> None:
    assert plan_for("cuda", "float16").vae_float32
    assert not plan_for("cuda", "float32").vae_float32


def test_cuda_offload_excludes_compile_and_tiles_earlier() -> None:
    plan = plan_for("cuda", "bfloat16", compile=True, offload=True)
    assert plan.offload and not plan.compile and not plan.lora_hotswap
    assert plan.vae_tiling_above == OFFLOAD_VAE_TILING_ABOVE < VAE_TILING_ABOVE
    assert plan_for("cuda", "bfloat16", offload=True, vae_tiling_above=5).vae_tiling_above == 5


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_plans_off_cuda(device: str) -> None:
    plan = plan_for(device, "float32", offload=True)
    assert not plan.offload and not plan.channels_last and not plan.compile
    assert plan.batch_invariant == (device == "cpu") and plan.attention == "sdpa"
    assert plan.vae_tiling_above == VAE_TILING_ABOVE
    compiled = plan_for(device, "float32", compile=True)
    assert compiled.compile and compiled.lora_hotswap and not compiled.batch_invariant


def test_plans_and_configs_import_without_torch() -> None:
    code = (
        "import sys, pipelines.tuning, pipelines.sdxl_configs\n"
        "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --- the renderer follows its plan


@pytest.fixture(scope="module")
def renderer(models_dir: Path) -> SDXLRenderer:
    renderer = SDXLRenderer("tiny", models_dir, vae_tiling_above=128 * 128)
    renderer.load()
    return renderer


def test_renderer_plan_and_sdpa_attention(renderer: SDXLRenderer, models_dir: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert renderer.plan == plan_for(renderer.device, renderer.dtype, vae_tiling_above=128 * 128)
    lora = LoraSpec("a" * 64, str(models_dir / "loras" / "tiny-lora-0.safetensors"), 1.0)
    renderer.render(SPEC)
    renderer.render(GenerationSpec(**{**vars(SPEC), "loras": (lora,)}))
    for model in (renderer.pipeline.unet, renderer.pipeline.vae):
        processors = model.attn_processors.values()
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


def test_vae_tiles_only_images_above_the_threshold(
    renderer: SDXLRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae = renderer.pipeline.vae
    tiled: list[tuple[int, ...]] = []
    tiled_decode = vae.tiled_decode
    monkeypatch.setattr(
        vae, "tiled_decode", lambda z, **kw: tiled.append(z.shape) or tiled_decode(z, **kw)
    )
    small = renderer.render(SPEC)[0]
    assert not vae.use_tiling and tiled == []
    # The tiny VAE's tiles are 256 pixels: only larger images are split.
    large = renderer.render(GenerationSpec(**{**vars(SPEC), "width": 320, "height": 256}))[0]
    assert vae.use_tiling and tiled == [(1, 4, 32, 40)] and large.size == (320, 256)
    assert pixels(small).std() > 1 and pixels(large).std() > 1


def test_float16_decodes_in_float32(models_dir: Path) -> None:
    renderer = SDXLRenderer("tiny", models_dir, dtype="float16")
    assert renderer.plan.vae_float32
    image = renderer.render(SPEC)[0]
    pipe = renderer.pipeline
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder_2.dtype == torch.float16
    assert pipe.vae.dtype == torch.float32
    assert image.size == (64, 64) and pixels(image).std() > 1


def test_channels_last_the_cuda_layout_renders_on_the_cpu_too(
    renderer: SDXLRenderer, models_dir: Path
) -> None:
    cuda_layout = SDXLRenderer("tiny", models_dir)
    cuda_layout.plan = dataclasses.replace(cuda_layout.plan, channels_last=True)
    image = cuda_layout.render(SPEC)[0]
    for conv in (cuda_layout.pipeline.unet.conv_in, cuda_layout.pipeline.vae.decoder.conv_in):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # oneDNN sums channels_last convolutions in another order: a level here and there.
    assert np.abs(pixels(image) - pixels(renderer.render(SPEC)[0])).max() <= 2


def test_warmup_renders_each_size_and_image_count(
    renderer: SDXLRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(
        renderer, "render", lambda spec: seen.append((spec.width, spec.height, spec.num_images))
    )
    renderer.warmup([(64, 64), (128, 96)], images=(1, 2))
    assert seen == [(64, 64, 1), (64, 64, 2), (128, 96, 1), (128, 96, 2)]


# --- full-size SDXL


def test_sdxl_configs_have_sdxl_base_parameter_counts() -> None:
    models = empty_models(SDXL_BASE_CONFIGS)
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
    assert all(p.is_meta for model in models.values() for p in model.parameters())


def test_build_random_sdxl_on_the_meta_device() -> None:
    pipe = build_random_sdxl(torch.float16, "meta")
    assert pipe.unet.dtype == torch.float16 and pipe.unet.device.type == "meta"
    assert pipe.unet.config.cross_attention_dim == 2048
    assert pipe.unet.config.transformer_layers_per_block == [1, 2, 10]
    assert pipe.vae.config.force_upcast and pipe.vae_scale_factor == 8
    assert pipe.tokenizer.model_max_length == pipe.tokenizer_2.model_max_length == 77
    assert pipe.scheduler.config.timestep_spacing == "leading"


def tiny_configs(models_dir: Path) -> dict[str, dict]:
    folder = tiny_model_dir(models_dir)
    ignored = {"architectures", "model_type", "dtype", "torch_dtype", "transformers_version"}
    configs = {}
    for name, file in [
        ("unet", "unet/config.json"),
        ("vae", "vae/config.json"),
        ("text_encoder", "text_encoder/config.json"),
        ("text_encoder_2", "text_encoder_2/config.json"),
        ("scheduler", "scheduler/scheduler_config.json"),
    ]:
        config = json.loads((folder / file).read_text())
        configs[name] = {k: v for k, v in config.items() if k not in ignored and k[0] != "_"}
    return configs


def test_random_pipeline_weights_render_on_the_cpu(models_dir: Path) -> None:
    pipe = random_sdxl_pipeline(tiny_configs(models_dir), torch.float32, "cpu")
    ids = pipe.text_encoder_2.text_model.embeddings.position_ids
    assert torch.equal(ids, torch.arange(77)[None])
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        prompt="noise", width=64, height=64, num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert np.isfinite(images).all() and images.std() > 0.01


# --- torch.compile


def lora_stacks(models_dir: Path) -> list[tuple[LoraSpec, ...]]:
    folder = models_dir / "loras"
    a = LoraSpec("a" * 64, str(folder / "tiny-lora-0.safetensors"), 1.0)
    b = LoraSpec("b" * 64, str(folder / "tiny-lora-1.safetensors"), 0.7)
    return [(a,), (), (b,), (a,)]


def test_compiled_renderer_switches_loras_and_batches_without_recompiling(
    models_dir: Path,
) -> None:
    """Dynamo's capture and guards, which decide recompiles, with the eager backend: the
    inductor backend would add minutes of C++ code generation on a CPU (see below)."""
    stacks = lora_stacks(models_dir)
    plain = SDXLRenderer("tiny", models_dir, lora_cache_size=1, lora_hotswap=True)
    plain.plan = dataclasses.replace(plain.plan, batch_invariant=False)  # as when compiled
    expected = [plain.render(GenerationSpec(**{**vars(SPEC), "loras": s}))[0] for s in stacks]

    compiled = SDXLRenderer("tiny", models_dir, compile=True, lora_cache_size=1)
    assert compiled.plan.compile and compiled.lora_hotswap
    compiled.plan = dataclasses.replace(compiled.plan, compile_backend="eager")
    compiled.warmup([(SPEC.width, SPEC.height)])
    with torch._dynamo.config.patch(error_on_recompile=True):
        for stack, image in zip(stacks, expected, strict=True):
            spec = GenerationSpec(**{**vars(SPEC), "loras": stack})
            assert pixels(compiled.render(spec)[0]).tobytes() == pixels(image).tobytes()
        # The warm-up rendered 1 and 2 images: any other count or batch needs no compile.
        assert len(compiled.render(dataclasses.replace(SPEC, seeds=(1, 2, 3)))) == 3
        four = [dataclasses.replace(SPEC, prompt=f"{i}", seeds=(i,)) for i in range(4)]
        assert len(compiled.render_batch(four)) == 4


@pytest.mark.skipif(
    os.environ.get("DARKROOM_TEST_INDUCTOR") != "1",
    reason="inductor compiling the tiny UNet and VAE decoder took 262 s on 2 CPU cores with "
    "a cold cache (37 s warm); set DARKROOM_TEST_INDUCTOR=1 to run it",
)
def test_inductor_compiled_render_matches_uncompiled(models_dir: Path) -> None:
    expected = SDXLRenderer("tiny", models_dir).render(SPEC)[0]
    compiled = SDXLRenderer("tiny", models_dir, compile=True)
    started = time.perf_counter()
    image = compiled.render(SPEC)[0]
    print(f"first compiled render: {time.perf_counter() - started:.1f} s")
    # Inductor fuses and reorders float arithmetic: close, not bit-identical.
    assert np.abs(pixels(image) - pixels(expected)).max() <= 2
