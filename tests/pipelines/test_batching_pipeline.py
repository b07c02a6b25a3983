"""Cross-request batching in the pipeline: render_batch against each spec rendered alone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.sdxl import SDXLRenderer
from pipelines.spec import GenerationSpec, LoraSpec, RenderInterrupted, batch_key

SIDE = 64
BASE = GenerationSpec("a lighthouse at dusk", "", SIDE, SIDE, 4, 5.0, "euler", (7,))
LORA = LoraSpec("a" * 64, "/loras/a.safetensors", 1.0)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_as_alone(together: Image.Image, alone: Image.Image) -> None:
    """Bit-identical on CPU, thanks to plan.batch_invariant: the UNet runs per image, on
    the rows the image has alone. Without it MKL's sgemm sums the UNet's per-image
    time-embedding rows in another order for 1, 2-3 and 4+ rows, and a one-image spec (2
    rows with CFG) moves by ~1e-7 in a batch, which the tiny model with a LoRA amplifies
    to several levels."""
    assert pixels(together).tobytes() == pixels(alone).tobytes()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Bit-exactness holds with one intra-op thread (what the server uses on a 2-core
    machine). With two threads here an image in a batch differed from its lone render by
    one level on a few pixels: the CPU kernels split the work by batch size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def renderer(models_dir: Path) -> SDXLRenderer:
    renderer = SDXLRenderer("tiny", models_dir)
    renderer.load()
    return renderer


@pytest.fixture(scope="module")
def lora(models_dir: Path) -> LoraSpec:
    return LoraSpec("c" * 64, str(models_dir / "loras" / "tiny-lora-0.safetensors"), 1.0)


def test_batch_key_groups_what_can_share_a_denoising_loop() -> None:
    others = [
        replace(BASE, prompt="a red bicycle"),
        replace(BASE, negative_prompt="blurry"),
        replace(BASE, seeds=(1, 2, 3)),
    ]
    assert {batch_key(spec) for spec in [BASE, *others]} == {batch_key(BASE)}
    # The stack that changes the image is what counts: zero weights and split weights.
    half = replace(LORA, weight=0.5)
    assert batch_key(replace(BASE, loras=(LORA,))) == batch_key(replace(BASE, loras=(half, half)))
    assert batch_key(replace(BASE, loras=(replace(LORA, weight=0.0),))) == batch_key(BASE)
    hash(batch_key(replace(BASE, loras=(LORA,))))


@pytest.mark.parametrize(
    "change",
    [
        {"width": SIDE * 2}, {"height": SIDE * 2}, {"steps": 5}, {"cfg_scale": 7.0},
        {"sampler": "euler_a"}, {"loras": (LORA,)}, {"loras": (replace(LORA, weight=0.5),)},
    ],
    ids=lambda change: next(iter(change)),
)  # fmt: skip
def test_batch_key_separates_what_changes_the_loop(change: dict) -> None:
    assert batch_key(replace(BASE, **change)) != batch_key(BASE)


def test_render_batch_gives_each_spec_its_images_alone(renderer: SDXLRenderer) -> None:
    specs = [
        BASE,  # empty negative prompt: zero embeddings
        replace(BASE, prompt="a red bicycle in the snow", negative_prompt="blurry", seeds=(8, 9)),
        replace(BASE, prompt="the cat and the dog", seeds=(10,)),
        replace(BASE, prompt="a lighthouse at dusk", negative_prompt="fog", seeds=(7,)),
    ]
    steps: list[tuple[int, int]] = []
    batches = renderer.render_batch(specs, on_step=lambda *step: steps.append(step))
    assert steps == [(step, 4) for step in range(1, 5)]
    assert [len(images) for images in batches] == [1, 2, 1, 1]
    for spec, images in zip(specs, batches, strict=True):
        for together, alone in zip(images, renderer.render(spec), strict=True):
            assert together.size == (SIDE, SIDE)
            assert_as_alone(together, alone)
    flat = [pixels(image) for images in batches for image in images]
    # Negative prompts and seeds reached the right images: every image is its own.
    assert all(np.abs(a - b).mean() > 1 for i, a in enumerate(flat) for b in flat[i + 1 :])


def test_every_image_of_a_batch_is_its_lone_seed_s_render_bit_for_bit(
    renderer: SDXLRenderer, lora: LoraSpec
) -> None:
    """Darkroom's promise on the CPU: a seed's pixels do not depend on what it was batched
    with. The UNet runs once per image, on the rows the image has alone, so no kernel
    sees another shape; checked with two threads, where one UNet call for the whole batch
    once put a batched image one level off its lone render."""
    rows: list[int] = []
    hook = renderer.pipeline.unet.conv_in.register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0])
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        base = replace(BASE, loras=(lora,), sampler="dpmpp_2m_sde")
        specs = [replace(base, seeds=(11, 12)), replace(base, prompt="a cat", seeds=(13,))]
        batches = renderer.render_batch(specs)
        assert set(rows) == {2}  # an image's unconditional and conditional rows, as alone
        for spec, images in zip(specs, batches, strict=True):
            for seed, together in zip(spec.seeds, images, strict=True):
                assert_as_alone(together, renderer.render(replace(spec, seeds=(seed,)))[0])
    finally:
        torch.set_num_threads(threads)
        hook.remove()


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_sde", "heun"])
def test_render_batch_with_a_lora_stack_and_noisy_samplers(
    renderer: SDXLRenderer, lora: LoraSpec, sampler: str
) -> None:
    base = replace(BASE, loras=(lora,), sampler=sampler, steps=5)
    specs = [base, replace(base, prompt="a cat", seeds=(3, 4)), replace(base, seeds=(5,))]
    batches = renderer.render_batch(specs)
    for spec, images in zip(specs, batches, strict=True):
        for together, alone in zip(images, renderer.render(spec), strict=True):
            assert_as_alone(together, alone)
    plain = renderer.render(replace(base, loras=()))[0]
    assert np.abs(pixels(batches[0][0]) - pixels(plain)).mean() > 1


def test_render_is_what_plain_diffusers_renders(renderer: SDXLRenderer) -> None:
    for spec in (BASE, replace(BASE, negative_prompt="blurry", seeds=(3, 4))):
        ours = renderer.render(spec)
        pipe = renderer.pipeline  # its scheduler is the euler that render() set
        with torch.inference_mode():
            theirs = pipe(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt or None,
                width=spec.width,
                height=spec.height,
                num_inference_steps=spec.steps,
                guidance_scale=spec.cfg_scale,
                num_images_per_prompt=spec.num_images,
                generator=[torch.Generator().manual_seed(seed) for seed in spec.seeds],
            ).images
        if spec.num_images == 1:
            assert pixels(ours[0]).tobytes() == pixels(theirs[0]).tobytes()
            continue
        # diffusers decodes the batch at once, Darkroom each image alone (so an image is
        # what it would be alone); CPU convolution kernels may round the last bit another
        # way for another batch size (since weights have their own aligned allocations).
        for a, b in zip(ours, theirs, strict=True):
            assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_render_batch_refuses_mixed_keys_and_accepts_none(renderer: SDXLRenderer) -> None:
    with pytest.raises(ValueError, match="batch_key"):
        renderer.render_batch([BASE, replace(BASE, steps=5)])
    assert renderer.render_batch([]) == []


def test_render_batch_stops_before_decoding(renderer: SDXLRenderer) -> None:
    decodes: list[int] = []
    hook = renderer.pipeline.vae.decoder.register_forward_hook(lambda *_: decodes.append(1))
    seen: list[int] = []
    specs = [BASE, replace(BASE, prompt="a cat", seeds=(1, 2))]
    try:
        with pytest.raises(RenderInterrupted):
            renderer.render_batch(
                specs, on_step=lambda step, _: seen.append(step), should_stop=lambda: len(seen) >= 2
            )
    finally:
        hook.remove()
    assert seen == [1, 2] and decodes == []
