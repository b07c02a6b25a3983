"""Image to image and the hires fix through the client package and the command line,
against a real server on both engines: Client.edit / AsyncClient.edit, generate(hires=),
`darkroom edit`, `darkroom generate --hires`, and `darkroom reproduce` of both."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client_fixtures import SMALL, LiveServer, darkroom, live_server
from darkroom_client import AsyncClient, Client


@pytest.fixture(scope="module")
def database_url(module_engine: str | None) -> str | None:
    return module_engine


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, database_url: str | None
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("client-img2img")
    yield from live_server(root, models_dir, {"alice": ()})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(3)
    init = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 160, 160))
    init.save(folder / "init.png")
    mask.save(folder / "mask.png")
    return folder / "init.png", folder / "mask.png"




def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_edit_takes_a_path_or_bytes_and_keeps_the_unmasked_pixels(
    server: LiveServer, inputs: tuple[Path, Path]
) -> None:
    init, mask = inputs
    settings = {"steps": 10, "seed": 8, "format": "png", "mask_blur": 0}
    with Client(server.url, server.tokens["alice"]) as client:
        by_path = client.edit(init, "a barn", mask=mask, strength=0.9, **settings)
        by_bytes = client.edit(init.read_bytes(), "a barn", mask=mask.read_bytes(),
                               strength=0.9, **settings)  # fmt: skip
        plain = client.edit(str(init), "a barn", strength=0.3, steps=10, seed=8, format="png")
        first, second = (pixels(done.images[0].bytes()) for done in (by_path, by_bytes))
        text = Image.open(io.BytesIO(plain.images[0].bytes())).info["parameters"]
    assert np.array_equal(first, second)
    outside = pixels(mask.read_bytes())[..., 0] == 0
    original = pixels(init.read_bytes())
    assert np.array_equal(first[outside], original[outside])
    assert not np.array_equal(first[~outside], original[~outside])
    assert by_path.images[0].metadata["width"] == 256  # no size given: the init image's
    assert "Denoising strength: 0.3" in text and "Mask blur" not in text


def test_async_edit_renders_what_edit_renders(
    server: LiveServer, inputs: tuple[Path, Path]
) -> None:
    init, _ = inputs

    async def edit() -> bytes:
        async with AsyncClient(server.url, server.tokens["alice"]) as client:
            done = await client.edit(init, "a mill", strength=0.5, steps=10, seed=4, format="png")
            return await done.images[0].abytes()

    with Client(server.url, server.tokens["alice"]) as client:
        sync = client.edit(init, "a mill", strength=0.5, steps=10, seed=4, format="png")
        expected = pixels(sync.images[0].bytes())
    assert np.array_equal(pixels(asyncio.run(edit())), expected)


def test_generate_with_hires_renders_twice_the_size(server: LiveServer) -> None:
    with Client(server.url, server.tokens["alice"]) as client:
        scaled = client.generate("a fox", **SMALL, seed=2, format="png", hires=2)
        hires = {"scale": 1.5, "steps": 2, "upscaler": "Nearest"}
        spelled = client.generate("a fox", **SMALL, seed=2, format="png", hires=hires)
        assert Image.open(io.BytesIO(scaled.images[0].bytes())).size == (512, 512)
        image = Image.open(io.BytesIO(spelled.images[0].bytes()))
    assert image.size == (384, 384)
    assert "Hires upscaler: Nearest" in image.info["parameters"]


def test_cli_edit_and_its_reproduction(
    server: LiveServer, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    init, mask = inputs
    out = tmp_path / "out"
    result = darkroom(server, "edit", str(init), "--prompt", "a barn", "--mask", str(mask),
                      "--strength", "0.6", "--mask-blur", "0", "--seed", "5", "--steps", "10",
                      "--format", "png", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rendering" in result.stderr and "download" in result.stderr  # the progress bar
    (image,) = out.glob("*.png")
    assert image.name.endswith("-5.png")  # as generate names them: {request_id}-{seed}
    assert result.stdout.strip() == str(image)
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar["reproduce"]["init_image"] == str(init)  # the file, not its bytes
    assert sidecar["reproduce"]["mask"] == str(mask)
    assert sidecar["reproduce"]["settings"]["denoising_strength"] == 0.6

    refused = darkroom(server, "reproduce", str(image))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"darkroom: VALIDATION_ERROR: {image} was made by image to image: reproducing it"
        " needs its init image (--init-image FILE, --mask FILE)"
    ]
    again = darkroom(server, "reproduce", str(image), "--init-image", str(init),
                     "--mask", str(mask))  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "identical" in again.stdout


def test_cli_generate_hires_and_its_reproduction(server: LiveServer, tmp_path: Path) -> None:
    result = darkroom(
        server, "generate", "a lighthouse", "--hires", "2", "--hires-steps", "2",
        "--hires-upscaler", "Lanczos", "--hires-strength", "0.5", "--size", "256",
        "--steps", "10", "--seed", "6", "--format", "png", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (image,) = tmp_path.glob("*-6.png")
    opened = Image.open(io.BytesIO(image.read_bytes()))
    assert opened.size == (512, 512)
    text = opened.info["parameters"]
    assert "Hires steps: 2" in text and "Denoising strength: 0.5" in text
    again = darkroom(server, "reproduce", str(image))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "identical" in again.stdout


def test_infotext_settings_are_what_the_contract_takes() -> None:
    """AUTOMATIC1111's hires and inpainting keys, read back as settings the server takes."""
    from darkroom_client.images import build_body
    from darkroom_client.infotext import image_settings
    from server.contract_images import ImageGenerateBody

    base = "a boat\nSteps: 12, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 320x256, "
    hires = image_settings(
        base + "Denoising strength: 0.45, Hires resize: 640x512, Hires steps: 4, Hires "
        "upscaler: Latent (nearest), Hires sampler: DPM++ 2M, Hires schedule type: Karras, "
        'Hires prompt: "a boat, detailed"'
    )
    assert hires == {"hires": {
        "width": 640, "height": 512, "steps": 4, "upscaler": "Latent (nearest)",
        "denoising_strength": 0.45, "sampler": "DPM++ 2M Karras", "prompt": "a boat, detailed",
    }}  # fmt: skip
    body = ImageGenerateBody.model_validate(build_body("a boat", **hires))
    assert body.settings.hires is not None and body.settings.hires.sampler == "dpmpp_2m_karras"
    inpaint = image_settings(
        base + "Denoising strength: 0.6, Mask blur: 2, Inpaint area: Only masked, Masked area "
        "padding: 16, Mask mode: Inpaint not masked, Masked content: latent noise"
    )
    assert inpaint == {
        "denoising_strength": 0.6, "mask_blur": 2, "inpaint_full_res": True,
        "inpaint_full_res_padding": 16, "inpainting_mask_invert": True, "inpainting_fill": 2,
    }  # fmt: skip
    assert image_settings(base + "Model: tiny") == {}


def test_cli_edit_with_hires_and_its_reproduction(
    server: LiveServer, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    init, _ = inputs
    result = darkroom(
        server, "edit", str(init), "--prompt", "a barn", "--strength", "0.5", "--hires", "2",
        "--hires-steps", "2", "--hires-strength", "0.3", "--seed", "7", "--steps", "10",
        "--format", "png", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (image,) = tmp_path.glob("*-7.png")
    opened = Image.open(io.BytesIO(image.read_bytes()))
    assert opened.size == (512, 512)  # the 256 px init image, twice
    text = opened.info["parameters"]
    assert "Denoising strength: 0.5" in text and "Hires denoising strength: 0.3" in text
    refused = darkroom(server, "reproduce", str(image))
    assert refused.returncode == 1 and "--init-image FILE" in refused.stderr
    again = darkroom(server, "reproduce", str(image), "--init-image", str(init))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "identical" in again.stdout
