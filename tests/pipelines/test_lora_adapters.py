"""Switching LoRA stacks on a loaded pipeline: whatever came before, a stack renders what
a pipeline that never saw another LoRA renders for it; weight 0 is no LoRA; evicted
adapters leave no weights behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import lora_builders as build
from pipelines.loras import LoraLoadError, adapter_name
from pipelines.sdxl import SDXLRenderer
from pipelines.spec import GenerationSpec, LoraSpec

CAPACITY = 2
WEIGHTS = (0.0, 0.6, 1.0, 1.7)
# (LoRA index, weight) pairs, in request order.
Stack = tuple[tuple[int, float], ...]


def spec(loras: tuple[LoraSpec, ...] = ()) -> GenerationSpec:
    return GenerationSpec("a lighthouse at dusk", "", 64, 64, 4, 5.0, "euler", (7,), loras)


@pytest.fixture(scope="module")
def lora_files(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[LoraSpec]:
    """Two PEFT-layout UNet LoRAs and a kohya one with text-encoder layers and rank 8."""
    kohya = build.kohya_lora(
        models_dir, tmp_path_factory.mktemp("adapters") / "kohya.safetensors", seed=21
    )
    paths = [models_dir / "loras" / "tiny-lora-0.safetensors",
             models_dir / "loras" / "tiny-lora-1.safetensors", kohya]  # fmt: skip
    return [LoraSpec(f"lora{i}", str(path), 1.0) for i, path in enumerate(paths)]


@pytest.fixture(scope="module")
def switching(models_dir: Path) -> SDXLRenderer:
    renderer = SDXLRenderer("tiny", models_dir, lora_cache_size=CAPACITY)
    renderer.load()
    return renderer


class Reference:
    """Each stack rendered on a pipeline stripped of every LoRA layer first."""

    def __init__(self, renderer: SDXLRenderer, loras: list[LoraSpec]) -> None:
        self.renderer, self.loras = renderer, loras
        self.images: dict[Stack, np.ndarray] = {}

    def __call__(self, stack: Stack) -> np.ndarray:
        # Weight 0 means "no LoRA": the reference leaves it out.
        stack = tuple((index, weight) for index, weight in stack if weight)
        if stack not in self.images:
            self.renderer.unload_loras()
            self.images[stack] = pixels(self.renderer.render(spec(as_specs(self.loras, stack))))
        return self.images[stack]

    def deltas(self, stack: Stack) -> dict[str, torch.Tensor]:
        """The weight changes PEFT adapters make for `stack`, per UNet layer."""
        self.renderer.unload_loras()
        self.renderer.adapters.apply(self.renderer.pipeline, as_specs(self.loras, stack))
        return lora_deltas(self.renderer)


@pytest.fixture(scope="module")
def reference(models_dir: Path, lora_files: list[LoraSpec]) -> Reference:
    renderer = SDXLRenderer("tiny", models_dir)
    renderer.load()
    return Reference(renderer, lora_files)


def as_specs(loras: list[LoraSpec], stack: Stack) -> tuple[LoraSpec, ...]:
    return tuple(LoraSpec(loras[i].key, loras[i].path, weight) for i, weight in stack)


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.asarray(images[0].convert("RGB"))


def parameter_count(renderer: SDXLRenderer) -> int:
    pipe = renderer.pipeline
    return sum(
        p.numel() for part in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
        for p in part.parameters()
    )  # fmt: skip


def adapter_sizes(renderer: SDXLRenderer, names: list[str]) -> int:
    pipe = renderer.pipeline
    return sum(
        p.numel()
        for part in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
        for name, p in part.named_parameters()
        if any(f".{adapter}." in name for adapter in names)
    )


def test_each_lora_and_weight_changes_the_image(reference: Reference) -> None:
    # Else the property below could not see residue.
    stacks = [(), ((0, 1.0),), ((0, 0.6),), ((1, 1.0),), ((2, 1.0),), ((2, 1.7),),
              ((0, 1.0), (2, 1.0))]  # fmt: skip
    images = [reference(stack).tobytes() for stack in stacks]
    assert len(set(images)) == len(stacks)


stacks = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(WEIGHTS)), max_size=3, unique_by=lambda p: p[0]
).map(tuple)


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(sequence=st.lists(stacks, min_size=1, max_size=4))
def test_any_sequence_of_stacks_renders_like_a_fresh_pipeline(
    switching: SDXLRenderer, reference: Reference, lora_files: list[LoraSpec], sequence: list
) -> None:
    base = parameter_count(switching) - adapter_sizes(
        switching, [adapter_name(key) for key in switching.adapters.loaded_keys]
    )
    for stack in sequence:
        image = pixels(switching.render(spec(as_specs(lora_files, stack))))
        assert np.array_equal(image, reference(stack)), stack
        loaded = [adapter_name(key) for key in switching.adapters.loaded_keys]
        assert len(loaded) <= max(CAPACITY, len([w for _, w in stack if w]))
        in_pipeline = switching.pipeline.get_list_adapters().values()
        assert {name for names in in_pipeline for name in names} == set(loaded)
        # Evicted adapters are gone from the device, weights and all.
        assert parameter_count(switching) == base + adapter_sizes(switching, loaded)


def test_unload_loras_restores_the_loaded_pipeline(
    switching: SDXLRenderer, reference: Reference, lora_files: list[LoraSpec]
) -> None:
    switching.render(spec(as_specs(lora_files, ((2, 1.0), (0, 0.6)))))
    switching.unload_loras()
    assert switching.adapters.loaded_keys == []
    assert not any("lora" in name for name, _ in switching.pipeline.unet.named_modules())
    assert np.array_equal(pixels(switching.render(spec())), reference(()))


# --- hot-swap mode: stacks merged into the UNet's weights, for a compiled UNet

HOTSWAP_SEQUENCE: list[Stack] = [
    ((0, 1.0),),
    ((2, 0.6), (0, 1.7)),  # the kohya LoRA, text-encoder layers and all
    ((1, 1.0),),  # evicts the least recently used LoRA from the cache
    (),  # every weight as loaded
    ((2, 1.0), (1, 0.6)),  # its text-encoder adapter comes back
    ((0, 0.0), (2, 1.7)),
]


@pytest.fixture(scope="module")
def hotswap(models_dir: Path) -> SDXLRenderer:
    renderer = SDXLRenderer("tiny", models_dir, lora_cache_size=CAPACITY, lora_hotswap=True)
    renderer.load()
    return renderer


def unet_state(renderer: SDXLRenderer) -> list[tuple]:
    """What compiled code depends on: the UNet's modules, parameter objects and shapes."""
    unet = renderer.pipeline.unet
    return [(name, id(p), tuple(p.shape)) for name, p in unet.named_parameters()]


def unet_weights(renderer: SDXLRenderer) -> dict[str, torch.Tensor]:
    """Each Linear and Conv2d weight of the UNet, under its unwrapped name, in float64."""
    weights = {}
    for name, module in renderer.pipeline.unet.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and ".lora_" not in name:
            weights[name.removesuffix(".base_layer")] = module.weight.detach().double()
    return weights


def lora_deltas(renderer: SDXLRenderer) -> dict[str, torch.Tensor]:
    """Each UNet layer's weight change from its active PEFT adapters, in float64."""
    deltas = {}
    with torch.no_grad():
        for name, module in renderer.pipeline.unet.named_modules():
            if hasattr(module, "lora_A") and not module.disable_adapters:
                active = [a for a in module.active_adapters if a in module.lora_A]
                deltas[name] = sum(module.get_delta_weight(a).double() for a in active)
    return deltas


def assert_computes(hotswap: SDXLRenderer, reference: Reference, stack: Stack) -> None:
    """Every UNet weight is the loaded one plus the sum of the stack's weighted LoRAs that
    one PEFT adapter per LoRA computes, up to float32 rounding. (Images cannot show this:
    on the random tiny model, changing one LoRA weight by 1e-7 moves pixels by 5 levels on
    average.)"""
    wanted = reference.deltas(stack)
    assert wanted, stack
    originals = unet_weights(reference.renderer)
    for name, weight in unet_weights(hotswap).items():
        delta, original = weight - originals[name], originals[name]
        target = wanted.get(name, torch.zeros_like(delta)).reshape(delta.shape)
        error = (delta - target).norm()
        assert error <= 1e-5 * target.norm() + 1e-6 * original.norm(), (stack, name)


def test_hotswap_merges_the_stack_and_never_changes_the_unet(
    hotswap: SDXLRenderer, reference: Reference, lora_files: list[LoraSpec]
) -> None:
    before = unet_state(hotswap)
    loaded = {name: weight.clone() for name, weight in unet_weights(hotswap).items()}
    for stack in HOTSWAP_SEQUENCE:
        image = pixels(hotswap.render(spec(as_specs(lora_files, stack))))
        if any(weight for _, weight in stack):
            assert_computes(hotswap, reference, stack)
        else:
            # No LoRA: the loaded weights bit for bit, so exactly the LoRA-free image.
            assert all(torch.equal(w, loaded[n]) for n, w in unet_weights(hotswap).items())
            assert np.array_equal(image, reference(stack))
    assert unet_state(hotswap) == before
    assert not any("lora" in name for name, _ in hotswap.pipeline.unet.named_modules())


def test_hotswap_refuses_a_lora_that_does_not_fit_and_changes_nothing(
    hotswap: SDXLRenderer,
    reference: Reference,
    lora_files: list[LoraSpec],
    models_dir: Path,
    tmp_path: Path,
) -> None:
    sd15 = build.sd15_lora(tmp_path / "sd15.safetensors")
    assert hotswap.lora_compatibility(sd15) is not None
    hotswap.render(spec(as_specs(lora_files, ((1, 1.0),))))
    before = unet_weights(hotswap)
    with pytest.raises(LoraLoadError, match="does not fit this model"):
        hotswap.render(spec((*as_specs(lora_files, ((0, 1.0),)), LoraSpec("sd15", str(sd15), 1.0))))
    after = unet_weights(hotswap)
    assert all(torch.equal(after[name], weight) for name, weight in before.items())
    hotswap.render(spec(as_specs(lora_files, ((0, 1.0), (2, 1.0)))))
    assert_computes(hotswap, reference, ((0, 1.0), (2, 1.0)))


def test_hotswap_takes_a_lora_of_any_rank(
    hotswap: SDXLRenderer, models_dir: Path, tmp_path: Path
) -> None:
    wide = build.kohya_lora(models_dir, tmp_path / "rank16.safetensors", seed=22, rank=16)
    assert hotswap.lora_compatibility(wide) is None
    plain = pixels(hotswap.render(spec()))
    assert not np.array_equal(
        pixels(hotswap.render(spec((LoraSpec("wide", str(wide), 1.0),)))), plain
    )
