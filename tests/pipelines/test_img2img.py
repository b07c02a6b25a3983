"""Image to image on the tiny SDXL-shaped model: img2img strength and steps, the VAE
round trip, inpainting's overlay and fills, resize modes, hires fix, batching."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines import image_ops
from pipelines.sdxl import SDXLRenderer
from pipelines.spec import GenerationSpec, HiresFix, ImageInput, batch_key, hires_size

BASE = GenerationSpec("a red barn", "", 64, 64, 4, 5.0, "euler", (5,))


@pytest.fixture(scope="module")
def renderer(tiny_renderer: Any) -> SDXLRenderer:
    return tiny_renderer._renderer  # the session's loaded tiny model (conftest)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    wide = Image.fromarray(rng.integers(0, 255, (48, 96, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    paths = {"init": init, "wide": wide, "mask": mask}
    for name, image in paths.items():
        image.save(root / f"{name}.png")
    return {name: str(root / f"{name}.png") for name in paths}


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_strength_runs_the_last_ceil_steps(renderer: SDXLRenderer, files: dict) -> None:
    steps: list[tuple[int, int]] = []
    spec = replace(BASE, steps=5, image=ImageInput(files["init"], denoising_strength=0.5))
    images = renderer.render(spec, on_step=lambda s, t: steps.append((s, t)))
    assert steps == [(1, 3), (2, 3), (3, 3)]  # ceil(5 * 0.5)
    assert images[0].size == (64, 64)
    again = renderer.render(spec)
    assert np.array_equal(arr(images[0]), arr(again[0]))  # same seed, same pixels
    other = renderer.render(replace(spec, seeds=(6,)))
    assert not np.array_equal(arr(images[0]), arr(other[0]))


def test_tiny_strength_is_the_init_image_through_the_vae(
    renderer: SDXLRenderer, files: dict
) -> None:
    steps: list[int] = []
    spec = replace(BASE, steps=4, image=ImageInput(files["init"], denoising_strength=0.2))
    first = renderer.render(spec, on_step=lambda s, t: steps.append(s))[0]
    second = renderer.render(replace(spec, seeds=(99,), prompt="anything"))[0]
    assert steps == []
    assert np.array_equal(arr(first), arr(second))  # no noise, no prompt: only the VAE


def test_inpainting_keeps_the_pixels_outside_the_blurred_mask(
    renderer: SDXLRenderer, files: dict
) -> None:
    init = arr(Image.open(files["init"]))
    blurred = np.asarray(image_ops.blur_mask(Image.open(files["mask"]), 4))
    outside = blurred == 0
    assert outside.sum() > 1000
    results = []
    for fill in range(4):
        image = ImageInput(files["init"], 0.9, mask=files["mask"], inpainting_fill=fill)
        out = arr(renderer.render(replace(BASE, image=image))[0])
        assert np.array_equal(out[outside], init[outside]), fill
        assert not np.array_equal(out[~outside], init[~outside]), fill
        results.append(out)
    assert not np.array_equal(results[0], results[3])  # the fills start differently


def test_inverted_mask_and_only_masked(renderer: SDXLRenderer, files: dict) -> None:
    init = arr(Image.open(files["init"]))
    image = ImageInput(files["init"], 0.9, mask=files["mask"], inpainting_mask_invert=True)
    out = arr(renderer.render(replace(BASE, image=image))[0])
    assert np.array_equal(out[26:30, 26:30], init[26:30, 26:30])  # the square is kept
    assert not np.array_equal(out[:8, :8], init[:8, :8])
    only = replace(image, inpainting_mask_invert=False, inpaint_full_res=True,
                   inpaint_full_res_padding=4)  # fmt: skip
    out = arr(renderer.render(replace(BASE, image=only))[0])
    assert np.array_equal(out[:8, :8], init[:8, :8])
    assert not np.array_equal(out[20:36, 20:36], init[20:36, 20:36])


def test_resize_modes_give_the_requested_size(renderer: SDXLRenderer, files: dict) -> None:
    for mode in range(4):
        image = ImageInput(files["wide"], 0.5, resize_mode=mode)
        out = renderer.render(replace(BASE, image=image))[0]
        assert out.size == (64, 64)
    filled = image_ops.resize_image(2, Image.open(files["wide"]), 64, 64)
    assert np.asarray(filled)[0].std() > 0  # the bands are the stretched edge, not black


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos", "None"])
def test_hires_fix_renders_twice_the_size(renderer: SDXLRenderer, upscaler: str) -> None:
    steps: list[tuple[int, int]] = []
    hires = HiresFix(*hires_size(64, 64, 2.0), upscaler, 2, 0.5)
    spec = replace(BASE, steps=3, hires=hires)
    out = renderer.render(spec, on_step=lambda s, t: steps.append((s, t)))
    assert out[0].size == (128, 128)
    assert steps == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert np.array_equal(arr(out[0]), arr(renderer.render(spec)[0]))


def test_hires_size_follows_a1111() -> None:
    assert hires_size(64, 48, 1.5) == (96, 72)
    assert hires_size(64, 48, 2.0, resize_x=100) == (96, 72)
    assert hires_size(64, 48, 2.0, resize_y=96) == (128, 96)
    assert hires_size(64, 48, 2.0, 128, 128) == (128, 128)


def test_img2img_batches_only_with_its_kind(renderer: SDXLRenderer, files: dict) -> None:
    a = replace(BASE, image=ImageInput(files["init"], 0.5))
    b = replace(a, prompt="another", seeds=(9,), image=ImageInput(files["wide"], 0.5))
    assert batch_key(a) == batch_key(b)
    assert batch_key(a) != batch_key(BASE)
    assert batch_key(a) != batch_key(replace(a, image=ImageInput(files["init"], 0.6)))
    both = renderer.render_batch([a, b])
    assert np.array_equal(arr(both[0][0]), arr(renderer.render(a)[0]))
    assert np.array_equal(arr(both[1][0]), arr(renderer.render(b)[0]))


def test_inpainting_several_images_each_keep_the_outside(
    renderer: SDXLRenderer, files: dict
) -> None:
    init = arr(Image.open(files["init"]))
    outside = np.asarray(image_ops.blur_mask(Image.open(files["mask"]), 4)) == 0
    image = ImageInput(files["init"], 0.9, mask=files["mask"], inpainting_fill=2)
    first, second = renderer.render(replace(BASE, seeds=(1, 2), image=image))
    assert np.array_equal(arr(first)[outside], init[outside])
    assert np.array_equal(arr(second)[outside], init[outside])
    assert not np.array_equal(arr(first), arr(second))
    alone = renderer.render(replace(BASE, seeds=(2,), image=image))[0]
    assert np.array_equal(arr(second), arr(alone))  # image 2 as if rendered alone


def test_the_time_estimate_counts_the_vae_encodes() -> None:
    """The queue's weight of an image-to-image holds its encode (the cost does not): an
    img2img at strength 1 weighs more than the txt2img of the same steps, a hires fix through
    an image upscaler more than through a latent one."""
    base = GenerationSpec("p", "", 64, 64, 4, 7.0, "euler", (1,))
    img2img = replace(base, image=ImageInput("init.png", denoising_strength=1.0))
    assert img2img.pixel_steps == base.pixel_steps
    assert img2img.work_pixel_steps == base.work_pixel_steps + 64 * 64
    latent = replace(base, hires=HiresFix(128, 128, "Latent", 4, 0.5))
    lanczos = replace(base, hires=HiresFix(128, 128, "Lanczos", 4, 0.5))
    assert latent.pixel_steps == lanczos.pixel_steps == latent.work_pixel_steps
    assert lanczos.work_pixel_steps == latent.work_pixel_steps + 128 * 128
