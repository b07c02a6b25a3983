"""pipelines/ against the real tiny SDXL model: no mocks, small images, few steps."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pipelines.loras import AdapterCache, LoraLoadError, adapter_name, effective_stack
from pipelines.samplers import SAMPLER_NAMES
from pipelines.sdxl import SDXLRenderer, default_model, detect_device, resolve_dtype
from pipelines.spec import GenerationSpec, LoraSpec, RenderInterrupted
from pipelines.tiny import ensure_tiny_model, tiny_model_dir

Pair = tuple[LoraSpec, LoraSpec]
ROOT = Path(__file__).resolve().parents[2]
SIDE = 64
DEFAULTS: dict[str, object] = {
    "prompt": "a lighthouse at dusk", "negative_prompt": "", "width": SIDE, "height": SIDE,
    "steps": 10, "cfg_scale": 5.0, "sampler": "euler", "seeds": (7,),
}  # fmt: skip


def make_spec(**overrides: object) -> GenerationSpec:
    return GenerationSpec(**{**DEFAULTS, **overrides})  # type: ignore[arg-type]


def with_weight(lora: LoraSpec, weight: float) -> LoraSpec:
    return LoraSpec(lora.key, lora.path, weight)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(pixels(a), pixels(b))


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture(scope="session")
def tiny_models(models_dir: Path) -> Path:
    """The suite's tiny model (conftest), with its two LoRAs."""
    return models_dir


@pytest.fixture(scope="session")
def renderer(tiny_models: Path) -> SDXLRenderer:
    renderer = SDXLRenderer("tiny", tiny_models)
    renderer.load()
    return renderer


@pytest.fixture(scope="session")
def loras(tiny_models: Path) -> Pair:
    folder = tiny_models / "loras"
    return (
        LoraSpec("a" * 64, str(folder / "tiny-lora-0.safetensors"), 1.0),
        LoraSpec("b" * 64, str(folder / "tiny-lora-1.safetensors"), 1.0),
    )


@pytest.fixture(scope="session")
def baseline(renderer: SDXLRenderer) -> Image.Image:
    """make_spec()'s image, rendered before any LoRA was ever loaded."""
    return renderer.render(make_spec())[0]


@pytest.fixture
def clean(renderer: SDXLRenderer, baseline: Image.Image) -> Iterator[SDXLRenderer]:
    yield renderer
    # Every LoRA test leaves the shared renderer computing the base model, bit for bit.
    assert same(renderer.render(make_spec())[0], baseline)


def test_names_and_specs_import_without_torch() -> None:
    code = (
        "import sys, pipelines, pipelines.samplers, pipelines.spec, pipelines.loras\n"
        "import pipelines.lora_files, server.library.loras\n"
        "print([m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --- the tiny model


def test_tiny_model_layout_and_sidecars(tiny_models: Path) -> None:
    model = tiny_model_dir(tiny_models)
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["force_zeros_for_empty_prompt"] is True
    for folder in ("tokenizer", "tokenizer_2"):
        names = {path.name for path in (model / folder).iterdir()}
        assert {"vocab.json", "merges.txt", "tokenizer.json"} <= names
    scheduler = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "EulerDiscreteScheduler"
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (0.00085, 0.012)
    assert scheduler["beta_schedule"] == "scaled_linear"
    assert (scheduler["timestep_spacing"], scheduler["steps_offset"]) == ("leading", 1)
    assert not list((tiny_models / "checkpoints").glob(".*")), "staging folder left behind"

    sidecars = [json.loads((tiny_models / f"loras/tiny-lora-{i}.json").read_text()) for i in (0, 1)]
    for sidecar in sidecars:
        assert set(sidecar) == {"name", "type", "personality", "description", "tags", "url"}
        assert sidecar["type"] == "style" and sidecar["url"] == "" and sidecar["tags"]
    for field in ("name", "personality", "description", "tags"):
        assert sidecars[0][field] != sidecars[1][field]


def test_tiny_loras_are_rank_4_on_attention_projections_of_a_clean_unet(tiny_models: Path) -> None:
    unet = load_file(str(tiny_model_dir(tiny_models) / "unet/diffusion_pytorch_model.safetensors"))
    assert unet and not [key for key in unet if "lora" in key]
    first = load_file(str(tiny_models / "loras/tiny-lora-0.safetensors"))
    second = load_file(str(tiny_models / "loras/tiny-lora-1.safetensors"))
    assert first.keys() == second.keys()
    assert all(key.startswith("unet.") and ".lora_" in key for key in first)
    targets = {key.rsplit(".lora_", 1)[0].removesuffix(".0").rsplit(".", 1)[-1] for key in first}
    assert targets == {"to_q", "to_k", "to_v", "to_out"}
    ups = [key for key in first if key.endswith("lora_B.weight")]
    assert all(first[key].shape[1] == 4 and first[key].abs().sum() > 0 for key in ups)
    assert not torch.equal(first[ups[0]], second[ups[0]])


def test_ensure_tiny_model_repairs_a_half_build_and_builds_deterministically(
    tiny_models: Path, tmp_path: Path
) -> None:
    index = tiny_model_dir(tiny_models) / "model_index.json"
    before = index.stat().st_mtime_ns
    assert ensure_tiny_model(tiny_models) == tiny_model_dir(tiny_models)
    assert index.stat().st_mtime_ns == before

    half = tiny_model_dir(tmp_path)
    (half / "unet").mkdir(parents=True)
    (half / "unet" / "junk").write_text("from a crashed build")
    assert ensure_tiny_model(tmp_path) == half
    assert not (half / "unet" / "junk").exists()
    for relative in (
        "checkpoints/tiny-sdxl/unet/diffusion_pytorch_model.safetensors",
        "checkpoints/tiny-sdxl/text_encoder_2/model.safetensors",
        "loras/tiny-lora-1.safetensors",
    ):
        # Tensors, not bytes: safetensors writes metadata keys in hash-map order.
        rebuilt, original = (
            load_file(str(tmp_path / relative)),
            load_file(str(tiny_models / relative)),
        )
        assert rebuilt.keys() == original.keys()
        assert all(torch.equal(rebuilt[key], original[key]) for key in original)


def test_tokenizers_give_different_prompts_different_ids(renderer: SDXLRenderer) -> None:
    for tokenizer in (renderer.pipeline.tokenizer, renderer.pipeline.tokenizer_2):
        ids = [
            tuple(tokenizer(prompt, padding="max_length", max_length=77).input_ids)
            for prompt in ("a cat", "a dog", "the cat and the dog")
        ]
        assert all(len(row) == 77 for row in ids) and len(set(ids)) == 3


# --- the renderer


def test_renderer_defaults_on_this_machine(renderer: SDXLRenderer) -> None:
    assert renderer.model == "tiny"
    assert renderer.pipeline.vae_scale_factor == 8
    assert resolve_dtype(None, "cuda") == "bfloat16"
    assert resolve_dtype("fp16", "cuda:1") == "float16"
    assert resolve_dtype(None, "cpu") == "float32"
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")
    if torch.cuda.is_available():
        pytest.skip("the CPU-only defaults do not apply here")
    assert (renderer.device, renderer.dtype) == (detect_device(), "float32")
    model, reason = default_model()
    assert model == "tiny" and reason


def test_same_spec_renders_identical_pixels(renderer: SDXLRenderer, baseline: Image.Image) -> None:
    images = renderer.render(make_spec())
    assert len(images) == 1
    assert images[0].size == (SIDE, SIDE) and images[0].mode == "RGB"
    assert same(images[0], baseline)


def test_batch_image_matches_its_seed_rendered_alone(renderer: SDXLRenderer) -> None:
    batch = renderer.render(make_spec(seeds=(41, 42), width=128, height=128))
    alone = [renderer.render(make_spec(seeds=(s,), width=128, height=128))[0] for s in (41, 42)]
    assert len(batch) == 2
    for together, single in zip(batch, alone, strict=True):
        # Not bit-exact on CPU: matmul/conv kernels block their sums by batch size (~1e-6
        # per UNet call, from the first Linear on), which can move a pixel by one level.
        assert np.abs(pixels(together) - pixels(single)).max() <= 2
        assert mean_diff(together, single) < 0.05
    assert mean_diff(batch[0], batch[1]) > 5


# fmt: off
CHANGES = [
    {"seeds": (8,)}, {"prompt": "a red bicycle in the snow"}, {"negative_prompt": "blurry"},
    {"cfg_scale": 9.0}, {"steps": 12}, {"sampler": "euler_a"},
]
# fmt: on


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: next(iter(change)))
def test_each_setting_changes_the_image(
    renderer: SDXLRenderer, baseline: Image.Image, change: dict
) -> None:
    assert mean_diff(renderer.render(make_spec(**change))[0], baseline) > 0.5


@pytest.fixture(scope="session")
def euler_short(renderer: SDXLRenderer) -> Image.Image:
    return renderer.render(make_spec(steps=4))[0]


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_renders_and_reports_each_step_once(
    renderer: SDXLRenderer, euler_short: Image.Image, sampler: str
) -> None:
    seen: list[tuple[int, int]] = []
    spec = make_spec(steps=4, sampler=sampler)
    image = renderer.render(spec, on_step=lambda *step: seen.append(step))[0]
    # heun and dpm2 run the UNet 2*steps-1 times and pndm steps+1 times; on_step still
    # sees plain steps.
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert image.size == (SIDE, SIDE) and pixels(image).std() > 1
    if sampler != "euler":
        assert not same(image, euler_short)


def test_should_stop_interrupts_before_decoding(
    renderer: SDXLRenderer, baseline: Image.Image
) -> None:
    decodes: list[int] = []
    hook = renderer.pipeline.vae.decoder.register_forward_hook(lambda *_: decodes.append(1))
    seen: list[int] = []
    try:
        with pytest.raises(RenderInterrupted):
            renderer.render(
                make_spec(),
                on_step=lambda step, _: seen.append(step),
                should_stop=lambda: len(seen) >= 3,
            )
        with pytest.raises(RenderInterrupted):
            renderer.render(
                make_spec(), on_step=lambda *_: seen.append(0), should_stop=lambda: True
            )
    finally:
        hook.remove()
    assert seen == [1, 2, 3] and decodes == []
    assert same(renderer.render(make_spec())[0], baseline)


def test_an_interrupted_two_stage_sampler_leaves_no_state_behind(renderer: SDXLRenderer) -> None:
    spec = make_spec(sampler="heun", steps=4)
    reference = renderer.render(spec)[0]
    calls = itertools.count(1)
    with pytest.raises(RenderInterrupted):
        renderer.render(spec, should_stop=lambda: next(calls) == 4)  # mid-step
    assert same(renderer.render(spec)[0], reference)


# --- LoRAs


def test_effective_stack_drops_zero_weights_and_merges_repeats() -> None:
    a, b, c = (LoraSpec(k * 3, f"/{k}.safetensors", 1.0) for k in "abc")
    stack = effective_stack((a, with_weight(b, 0.0), with_weight(c, 0.5), with_weight(a, 0.25)))
    assert [(lora.key, weight) for lora, weight in stack] == [("aaa", 1.25), ("ccc", 0.5)]
    assert effective_stack((with_weight(a, 0.5), with_weight(a, -0.5))) == []
    assert adapter_name("ab.c/d") == "dr_ab_c_d"
    with pytest.raises(ValueError):
        AdapterCache(capacity=0)


def test_lora_changes_the_image_and_weight_zero_is_exactly_no_lora(
    clean: SDXLRenderer, baseline: Image.Image, loras: Pair
) -> None:
    lora, _ = loras
    loaded_before = clean.adapters.loaded_keys
    assert same(clean.render(make_spec(loras=(with_weight(lora, 0.0),)))[0], baseline)
    assert clean.adapters.loaded_keys == loaded_before
    full = clean.render(make_spec(loras=(lora,)))[0]
    assert mean_diff(full, baseline) > 3
    half = clean.render(make_spec(loras=(with_weight(lora, 0.5),)))[0]
    assert 0 < mean_diff(half, baseline) < mean_diff(full, baseline)


def test_lora_effect_is_visible_at_api_size(clean: SDXLRenderer, loras: Pair) -> None:
    plain = clean.render(make_spec(width=256, height=256))[0]
    styled = clean.render(make_spec(width=256, height=256, loras=loras[:1]))[0]
    assert mean_diff(plain, styled) > 3


def test_lora_stacks_leave_no_residue(
    clean: SDXLRenderer, baseline: Image.Image, loras: Pair
) -> None:
    a, b = loras
    stacks = [(a,), (a, b), (with_weight(b, 0.7),)]
    first = [clean.render(make_spec(loras=stack))[0] for stack in stacks]
    assert same(clean.render(make_spec())[0], baseline)
    for stack, image in zip(reversed(stacks), reversed(first), strict=True):
        assert same(clean.render(make_spec(loras=stack))[0], image)
    assert len({pixels(image).tobytes() for image in [baseline, *first]}) == 4


def test_lru_eviction_reloads_to_the_same_image(
    tiny_models: Path, renderer: SDXLRenderer, loras: Pair
) -> None:
    a, b = loras
    small = SDXLRenderer("tiny", tiny_models, lora_cache_size=1)
    plain = small.render(make_spec())[0]
    first_a = small.render(make_spec(loras=(a,)))[0]
    small.render(make_spec(loras=(b,)))
    assert small.adapters.loaded_keys == [b.key]
    assert small.pipeline.get_list_adapters()["unet"] == [adapter_name(b.key)]
    assert same(small.render(make_spec(loras=(a,)))[0], first_a)
    # A stack larger than the cache is held while it renders, then trimmed.
    small.render(make_spec(loras=(a, b)))
    assert len(small.adapters.loaded_keys) == 2
    small.render(make_spec(loras=(b,)))
    assert small.adapters.loaded_keys == [b.key]
    assert same(small.render(make_spec())[0], plain)
    # A separately loaded pipeline agrees with the shared one, LoRA included.
    assert same(renderer.render(make_spec(loras=(a,)))[0], first_a)


BROKEN_KINDS = ["missing", "not-safetensors", "garbage", "wrong-shape", "foreign"]


def write_broken_lora(kind: str, good: Path, folder: Path) -> Path:
    """A LoRA file of the given kind of brokenness ("missing" is never written)."""
    path = folder / ("weights.ckpt" if kind == "not-safetensors" else f"{kind}.safetensors")
    if kind in ("garbage", "not-safetensors"):
        path.write_bytes(b"this is not a safetensors file")
    elif kind == "wrong-shape":  # as if made for another base model
        weights = load_file(str(good))
        save_file(
            {k: v[:, :-1].contiguous() if "lora_A" in k else v for k, v in weights.items()},
            str(path),
        )
    elif kind == "foreign":
        save_file({"lora_unet_nowhere.lora_down.weight": torch.ones(4, 8)}, str(path))
    return path


@pytest.mark.parametrize("kind", BROKEN_KINDS)
# diffusers' own cleanup of a half-loaded adapter deletes it while active; PEFT warns.
def test_unloadable_lora_raises_and_leaves_the_pipeline_clean(
    clean: SDXLRenderer, tmp_path: Path, loras: Pair, kind: str
) -> None:
    good, _ = loras
    broken = LoraSpec("f" * 64, str(write_broken_lora(kind, Path(good.path), tmp_path)), 1.0)
    with_good = clean.render(make_spec(loras=(good,)))[0]
    adapters_before = clean.pipeline.get_list_adapters()
    with pytest.raises(LoraLoadError) as failure:
        clean.render(make_spec(loras=(good, broken)))
    assert failure.value.key == broken.key and failure.value.reason
    assert clean.pipeline.get_list_adapters() == adapters_before
    assert broken.key not in clean.adapters.loaded_keys
    assert same(clean.render(make_spec(loras=(good,)))[0], with_good)


def test_free_memory_after_out_of_memory_keeps_the_renderer_usable(renderer: SDXLRenderer) -> None:
    before = renderer.render(make_spec())[0]
    renderer.free_memory()
    assert np.array_equal(np.asarray(renderer.render(make_spec())[0]), np.asarray(before))
