"""SDXL inpainting checkpoints (9-channel UNet) on tiny SDXL-block models: classified as
inpainting-only, loaded from a folder or a single file, rendering inpainting with the mask
and the masked image's latents fed to the UNet, and nothing else."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from checkpoint_builders import build_tiny_xl, build_tiny_xl_inpainting, to_single_file
from pipelines import image_ops
from pipelines.checkpoint_files import classify_checkpoint
from pipelines.inpaint_unet import InpaintingOnly
from pipelines.sdxl import SDXLRenderer
from pipelines.spec import GenerationSpec, HiresFix, ImageInput, ModelSpec

BASE = GenerationSpec("a red barn", "", 64, 64, 4, 5.0, "euler", (5,))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny-xl-blocks, the inpainting model made from it (folder and single file), and one
    whose mask and masked-image weights are zero."""
    root = tmp_path_factory.mktemp("inpainting-models")
    paths = {
        "base": build_tiny_xl(root / "base"),
        "inpaint": build_tiny_xl_inpainting(root / "inpaint"),
        "zero": build_tiny_xl_inpainting(root / "zero", extra=0.0),
    }
    paths["file"] = to_single_file(paths["inpaint"], root / "inpaint.safetensors")
    return paths


@pytest.fixture(scope="module")
def renderer(models: dict[str, Path]) -> SDXLRenderer:
    renderer = SDXLRenderer(str(models["base"]), models["base"].parent, models_loaded=4)
    renderer.load()
    return renderer


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inpainting-images")
    rng = np.random.default_rng(7)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 44, 44))
    init.save(root / "init.png")
    mask.save(root / "mask.png")
    return {"init": str(root / "init.png"), "mask": str(root / "mask.png")}


def on(models: dict[str, Path], name: str, spec: GenerationSpec) -> GenerationSpec:
    return replace(spec, model=ModelSpec(name, str(models[name])))


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_inpainting_checkpoints_are_inpainting_only(models: dict[str, Path]) -> None:
    for name, fmt in (("inpaint", "diffusers"), ("file", "single-file")):
        info = classify_checkpoint(models[name])
        assert (info.format, info.base_model, info.compatible) == (fmt, "SDXL inpainting", True)
        assert info.inpainting and info.reason is None
    base = classify_checkpoint(models["base"])
    assert (base.base_model, base.compatible, base.inpainting) == ("SDXL", True, False)


def test_an_inpainting_model_inpaints_keeping_the_outside(
    renderer: SDXLRenderer, models: dict[str, Path], files: dict
) -> None:
    init = arr(Image.open(files["init"]))
    outside = np.asarray(image_ops.blur_mask(Image.open(files["mask"]), 4)) == 0
    image = ImageInput(files["init"], 0.75, mask=files["mask"], inpainting_fill=1)
    spec = on(models, "inpaint", replace(BASE, image=image))
    first = arr(renderer.render(spec)[0])
    assert np.array_equal(first[outside], init[outside])
    assert not np.array_equal(first[~outside], init[~outside])
    assert np.array_equal(first, arr(renderer.render(spec)[0]))  # same seed, same pixels
    assert not np.array_equal(first, arr(renderer.render(replace(spec, seeds=(6,)))[0]))
    # The single file converted from the folder renders the folder's pixels.
    assert np.array_equal(first, arr(renderer.render(on(models, "file", spec))[0]))
    # The base model's inpainting of the same job differs inside the mask.
    base = arr(renderer.render(on(models, "base", spec))[0])
    assert np.array_equal(base[outside], init[outside])
    assert np.abs(base - first)[~outside].mean() > 5


def test_the_unet_gets_the_mask_and_masked_image_after_the_latents(
    renderer: SDXLRenderer, models: dict[str, Path], files: dict
) -> None:
    """With its mask and masked-image weights zero, the inpainting model is tiny-xl-blocks:
    the latents go first, through the same loop, so it renders the base model's inpainting
    (but for the float rounding of a wider convolution). Its extra channels, when weighted,
    change the result: they are fed."""
    image = ImageInput(files["init"], 0.75, mask=files["mask"], inpainting_fill=1)
    spec = replace(BASE, image=image)
    base = arr(renderer.render(on(models, "base", spec))[0])
    zero = arr(renderer.render(on(models, "zero", spec))[0])
    weighted = arr(renderer.render(on(models, "inpaint", spec))[0])
    assert np.abs(zero - base).max() <= 2
    assert np.abs(weighted - base).mean() > 10 * max(np.abs(zero - base).mean(), 0.01)


def test_the_extra_channels_are_diffusers_mask_and_masked_image_latents(
    renderer: SDXLRenderer, models: dict[str, Path], files: dict
) -> None:
    """What the UNet's first convolution receives after the latents: the mask as
    StableDiffusionXLInpaintPipeline prepares it (its mask processor, prepare_mask_latents),
    then the latents of its masked image (init * (mask < 0.5)), for both rows of guidance."""
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline

    from pipelines.placement import scale

    image = ImageInput(files["init"], 0.75, mask=files["mask"], mask_blur=0)
    spec = on(models, "inpaint", replace(BASE, image=image))
    renderer.render(spec)  # loads it
    pipe = renderer.pipeline
    seen: list[torch.Tensor] = []
    hook = pipe.unet.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        renderer.render(spec)
    finally:
        hook.remove()
    first = seen[0]
    assert first.shape == (2, 9, 8, 8)
    reference = StableDiffusionXLInpaintPipeline.from_pipe(pipe)
    with torch.no_grad():
        mask = reference.mask_processor.preprocess(Image.open(files["mask"]), 64, 64)
        init = reference.image_processor.preprocess(Image.open(files["init"]), 64, 64)
        small, _ = reference.prepare_mask_latents(
            mask, None, 1, 64, 64, torch.float32, "cpu", None, True
        )
        masked = scale(pipe.vae, pipe.vae.encode(init * (mask < 0.5)).latent_dist.mode())
    assert 0 < small.sum() < small.numel()
    assert torch.equal(first[:, 4:5], small)
    assert torch.allclose(first[:, 5:], masked.expand(2, -1, -1, -1), atol=1e-5)


def test_fills_only_masked_invert_and_batches(
    renderer: SDXLRenderer, models: dict[str, Path], files: dict
) -> None:
    init = arr(Image.open(files["init"]))
    outside = np.asarray(image_ops.blur_mask(Image.open(files["mask"]), 4)) == 0
    for fill in (0, 2, 3):
        image = ImageInput(files["init"], 0.9, mask=files["mask"], inpainting_fill=fill)
        out = arr(renderer.render(on(models, "inpaint", replace(BASE, image=image)))[0])
        assert np.array_equal(out[outside], init[outside]), fill
    only = ImageInput(
        files["init"], 0.9, mask=files["mask"], inpaint_full_res=True, inpaint_full_res_padding=4
    )
    out = arr(renderer.render(on(models, "inpaint", replace(BASE, image=only)))[0])
    assert np.array_equal(out[outside], init[outside])
    inverted = ImageInput(files["init"], 0.9, mask=files["mask"], inpainting_mask_invert=True)
    out = arr(renderer.render(on(models, "inpaint", replace(BASE, image=inverted)))[0])
    assert np.array_equal(out[26:34, 26:34], init[26:34, 26:34])  # the square is kept
    assert not np.array_equal(out[:8, :8], init[:8, :8])
    image = ImageInput(files["init"], 0.9, mask=files["mask"])
    spec = on(models, "inpaint", replace(BASE, image=image))
    first, second = renderer.render(replace(spec, seeds=(1, 2)))
    assert np.array_equal(arr(first)[outside], init[outside])
    assert np.array_equal(arr(second)[outside], init[outside])
    assert np.array_equal(arr(second), arr(renderer.render(replace(spec, seeds=(2,)))[0]))


def test_anything_but_inpainting_is_refused(
    renderer: SDXLRenderer, models: dict[str, Path], files: dict
) -> None:
    hires = HiresFix(128, 128, "Latent", 2, 0.5)
    masked = ImageInput(files["init"], 0.5, mask=files["mask"])
    for spec in (
        BASE,
        replace(BASE, image=ImageInput(files["init"], 0.5)),
        replace(BASE, hires=hires),
        replace(BASE, image=masked, hires=hires),  # a second pass would have no mask
    ):
        with pytest.raises(InpaintingOnly, match="renders only inpainting"):
            renderer.render(on(models, "inpaint", spec))
    assert renderer.render(on(models, "base", BASE))[0].size == (64, 64)
