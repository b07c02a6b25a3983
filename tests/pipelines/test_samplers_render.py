"""The A1111 samplers on the tiny SDXL: every listed one renders; the SDE samplers draw
per-image Brownian-tree noise (torchsde): reproducible, seed-dependent, batch-invariant."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torchsde
from PIL import Image

from pipelines.samplers import a1111_samplers, resolve
from pipelines.spec import GenerationSpec

SIDE = 64
SDE = ["dpmpp_sde_karras", "dpmpp_2m_sde_exponential", "dpmpp_2m_sde_heun_karras"]


def make_spec(sampler: str, seeds: tuple[int, ...] = (7,), prompt: str = "a fox") -> GenerationSpec:
    return GenerationSpec(prompt, "", SIDE, SIDE, 10, 5.0, sampler, seeds)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("sampler", [s["name"] for s in a1111_samplers()])
def test_every_listed_sampler_renders_with_its_default_scheduler(
    tiny_renderer: Any, sampler: str
) -> None:
    steps: list[int] = []
    spec = make_spec(resolve(sampler, "automatic"))
    image = tiny_renderer.render(spec, on_step=lambda step, _: steps.append(step))[0]
    assert image.size == (SIDE, SIDE) and pixels(image).std() > 1
    assert steps == list(range(1, 11))


@pytest.mark.parametrize("sampler", SDE)
def test_sde_samplers_are_reproducible_and_seeded(tiny_renderer: Any, sampler: str) -> None:
    first = pixels(tiny_renderer.render(make_spec(sampler))[0])
    tiny_renderer.render(make_spec(sampler, (99,)))  # cached scheduler, other trees between
    again = pixels(tiny_renderer.render(make_spec(sampler))[0])
    other = pixels(tiny_renderer.render(make_spec(sampler, (8,)))[0])
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 5


@pytest.mark.parametrize("sampler", SDE)
def test_sde_image_is_the_same_alone_and_inside_a_batch(tiny_renderer: Any, sampler: str) -> None:
    specs = [make_spec(sampler, (41,)), make_spec(sampler, (42, 43), prompt="a red bicycle")]
    batch = tiny_renderer.render_batch(specs)
    alone = [tiny_renderer.render(make_spec(sampler, (42,), prompt="a red bicycle"))[0]]
    alone.insert(0, tiny_renderer.render(specs[0])[0])
    for together, single in zip((batch[0][0], batch[1][0]), alone, strict=True):
        # As tests/test_pipelines.py's batch test: CPU kernels block their sums by batch
        # size (~1e-6 per UNet call), which can move a pixel by a level or two.
        difference = np.abs(pixels(together) - pixels(single))
        assert difference.max() <= 2 and difference.mean() < 0.05
    assert np.abs(pixels(batch[1][0]) - pixels(batch[1][1])).mean() > 5


@pytest.mark.parametrize("sampler", SDE)
def test_sde_noise_comes_from_one_torchsde_tree_per_image_seeded_with_its_seed(
    tiny_renderer: Any, sampler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entropies: list[int] = []
    calls: list[int] = []
    real = torchsde.BrownianInterval

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            entropies.append(kwargs["entropy"])
            super().__init__(*args, **kwargs)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(torchsde, "BrownianInterval", Spy)
    tiny_renderer.render(make_spec(sampler, (5, 6)))
    assert entropies == [5, 6]
    assert len(calls) >= 2 * 9  # both trees, every step but the last (to sigma 0)


def test_2m_sde_differs_from_diffusers_plain_randn_noise(tiny_renderer: Any) -> None:
    import torch
    from diffusers import DPMSolverMultistepScheduler

    renderer = tiny_renderer._renderer
    spec = make_spec("dpmpp_2m_sde_exponential")
    brownian = pixels(tiny_renderer.render(spec)[0])
    cached = renderer._schedulers["dpmpp_2m_sde_exponential"]
    plain = DPMSolverMultistepScheduler.from_config(cached.config)
    pipe = renderer.pipeline
    pipe.scheduler = plain
    with torch.inference_mode():
        image = pipe(
            prompt="a fox", width=SIDE, height=SIDE, num_inference_steps=10, guidance_scale=5.0,
            generator=[torch.Generator().manual_seed(7)],
        ).images[0]  # fmt: skip
    assert np.abs(pixels(image) - brownian).mean() > 1
