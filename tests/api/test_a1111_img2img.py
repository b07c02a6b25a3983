"""Image to image through the real `webuiapi` package against a real server process:
img2img, inpainting (each fill; pixels outside the mask kept), hires fix, bad images in
AUTOMATIC1111's error shapes, the inputs kept in the vault, credits by steps run."""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from pipelines import image_ops
from processes import ServerProcess

SMALL = {"width": 256, "height": 256, "steps": 10}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("img2img-data")
    with ServerProcess(data, models_dir, data / "server.log") as server:
        server.data_dir = data  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def noise_image(width: int = 256, height: int = 256, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def square_mask(size: int = 256) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (64, 64, 160, 160))
    return mask


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_img2img_same_seed_same_pixels(api: webuiapi.WebUIApi) -> None:
    init = noise_image()
    first = api.img2img(images=[init], prompt="a barn", seed=4, denoising_strength=0.5, **SMALL)
    again = api.img2img(images=[init], prompt="a barn", seed=4, denoising_strength=0.5, **SMALL)
    other = api.img2img(images=[init], prompt="a barn", seed=5, denoising_strength=0.5, **SMALL)
    assert first.image.size == (256, 256)
    assert np.array_equal(arr(first.image), arr(again.image))
    assert not np.array_equal(arr(first.image), arr(other.image))
    text = first.image.info["parameters"]
    assert "Steps: 10," in text and "Denoising strength: 0.5" in text
    assert "Mask blur" not in text
    assert first.info["infotexts"][0] == text
    assert first.parameters["init_images"] is None  # include_init_images is off


def test_inpainting_each_fill_keeps_pixels_outside_the_mask(api: webuiapi.WebUIApi) -> None:
    init, mask = noise_image(seed=2), square_mask()
    outside = np.asarray(image_ops.blur_mask(mask, 4)) == 0
    results = []
    for fill in range(4):
        result = api.img2img(
            images=[init], mask_image=mask, prompt="a barn", seed=3, inpainting_fill=fill,
            inpaint_full_res=False, denoising_strength=0.9, **SMALL,
        )  # fmt: skip
        out = arr(result.image)
        assert np.array_equal(out[outside], arr(init)[outside]), fill
        assert not np.array_equal(out[~outside], arr(init)[~outside]), fill
        assert "Mask blur: 4" in result.image.info["parameters"]
        results.append(out)
    assert len({r.tobytes() for r in results}) == 4
    only = api.img2img(
        images=[init], mask_image=mask, prompt="a barn", seed=3, inpaint_full_res=True,
        inpaint_full_res_padding=16, denoising_strength=0.9, **SMALL,
    )  # fmt: skip
    assert np.array_equal(arr(only.image)[outside], arr(init)[outside])
    assert "Inpaint area: Only masked" in only.image.info["parameters"]


def test_mask_of_another_size_is_resized(api: webuiapi.WebUIApi) -> None:
    init = noise_image(seed=5)
    small = square_mask().resize((64, 64), Image.Resampling.NEAREST)
    result = api.img2img(images=[init], mask_image=small, prompt="x", seed=1,
                         inpaint_full_res=False, **SMALL)  # fmt: skip
    assert arr(result.image)[:32, :32].tolist() == arr(init)[:32, :32].tolist()


@pytest.mark.parametrize("upscaler", ["Latent (bicubic antialiased)", "Lanczos"])
def test_hires_fix_doubles_the_size(api: webuiapi.WebUIApi, upscaler: str) -> None:
    kwargs = {"prompt": "a barn", "seed": 9, "enable_hr": True, "hr_scale": 2,
              "hr_upscaler": upscaler, "hr_second_pass_steps": 3, **SMALL}  # fmt: skip
    first = api.txt2img(**kwargs)
    assert first.image.size == (512, 512)
    assert np.array_equal(arr(first.image), arr(api.txt2img(**kwargs).image))
    text = first.image.info["parameters"]
    assert "Size: 256x256" in text and "Hires upscale: 2" in text
    assert f"Hires upscaler: {upscaler}" in text and "Hires steps: 3" in text
    assert "Denoising strength: 0.7" in text


def test_upscaler_lists_are_what_runs(api: webuiapi.WebUIApi) -> None:
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    modes = api.session.get(f"{api.baseurl}/latent-upscale-modes").json()
    assert [m["name"] for m in modes][:2] == ["Latent", "Latent (antialiased)"]
    body = {"prompt": "x", "enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}
    bad = httpx.post(f"{api.baseurl}/txt2img", json=body)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "hr_upscaler"]


def _png_bomb(side: int = 30000) -> bytes:
    """A valid PNG header claiming side x side pixels, a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_bad_images_are_refused_and_the_server_stays_up(
    api: webuiapi.WebUIApi, server: ServerProcess
) -> None:
    url = f"{api.baseurl}/img2img"
    png = io.BytesIO()
    noise_image().save(png, "PNG")
    truncated = base64.b64encode(png.getvalue()[:2000]).decode()
    cases = {
        "not base64": ("init_images", "@@@not base64@@@", 422),
        "not an image": ("init_images", base64.b64encode(b"hello world").decode(), 422),
        "truncated": ("init_images", truncated, 422),
        "bomb": ("init_images", base64.b64encode(_png_bomb()).decode(), 400),
        "too many pixels": ("init_images", base64.b64encode(_png_bomb(5000)).decode(), 400),
        "bad mask": ("mask", "data:image/png;base64,AAAA", 422),
    }
    for name, (field, value, status) in cases.items():
        body = {"prompt": "x", "init_images": [b64(noise_image(64, 64))], **SMALL}
        body[field] = [value] if field == "init_images" else value
        response = httpx.post(url, json=body, timeout=60)
        assert response.status_code == status, (name, response.text)
        text = response.text
        assert ("init_images" if field == "init_images" else "mask") in text, name
        if status == 400:
            assert response.json()["error"] == "VALIDATION_ERROR"
            assert "900000000 pixels" in text or "5000x5000" in text, name
    huge = "A" * (30 * 1024 * 1024)
    response = httpx.post(url, json={"prompt": "x", "init_images": [huge]}, timeout=60)
    assert response.status_code == 413
    assert httpx.get(f"{server.base}/health").status_code == 200


def test_inputs_are_kept_once_and_shown(api: webuiapi.WebUIApi, server: ServerProcess) -> None:
    init, mask = noise_image(seed=8), square_mask()
    inputs_dir = server.data_dir / "vault" / "inputs"  # type: ignore[attr-defined]
    before = set(inputs_dir.rglob("*.png"))
    for seed in (1, 2):
        result = api.img2img(images=[init], mask_image=mask, prompt="x", seed=seed,
                             denoising_strength=0.5, **SMALL)  # fmt: skip
    request_id = result.info["request_id"]
    detail = httpx.get(f"{server.base}/generations/{request_id}").json()
    inputs = detail["inputs"]
    assert set(inputs) == {"init_image", "mask"}
    assert inputs["init_image"]["width"] == 256
    kept = httpx.get(inputs["init_image"]["url"])
    assert kept.status_code == 200
    assert np.array_equal(arr(Image.open(io.BytesIO(kept.content))), arr(init))
    def path(field: str) -> Path:
        digest = inputs[field]["sha256"]
        return inputs_dir / digest[:2] / f"{digest}.png"

    # Content-addressed: this init image is new (one file for both calls); the mask is
    # the one the inpainting tests sent, stored then and not again.
    assert set(inputs_dir.rglob("*.png")) - before == {path("init_image")}
    assert path("mask") in before
    # Cost by steps run: 0.5 of 10 steps at 256x256 is 5 / (16 * 30) credits.
    assert detail["credits_used"] == pytest.approx(5 / (16 * 30), abs=1e-4)


def test_an_input_leaves_the_vault_with_the_last_generation_naming_it(
    api: webuiapi.WebUIApi, server: ServerProcess
) -> None:
    init = noise_image(seed=31)
    inputs_dir = server.data_dir / "vault" / "inputs"  # type: ignore[attr-defined]
    ids = [
        api.img2img(images=[init], prompt="x", seed=seed, denoising_strength=0.3,
                    **SMALL).info["request_id"]  # fmt: skip
        for seed in (1, 2)
    ]
    inputs = httpx.get(f"{server.base}/generations/{ids[0]}").json()["inputs"]
    digest = inputs["init_image"]["sha256"]
    path = inputs_dir / digest[:2] / f"{digest}.png"
    assert path.exists()
    assert httpx.delete(f"{server.base}/generations/{ids[0]}").status_code == 200
    assert path.exists()  # the second generation still names it
    again = httpx.get(f"{server.base}/generations/{ids[1]}/inputs/init_image")
    assert again.status_code == 200
    assert np.array_equal(arr(Image.open(io.BytesIO(again.content))), arr(init))
    assert httpx.delete(f"{server.base}/generations/{ids[1]}").status_code == 200
    assert not path.exists()
    assert httpx.get(f"{server.base}/generations/{ids[1]}").status_code == 404


def test_a_refused_img2img_keeps_no_copy_of_its_image(server: ServerProcess) -> None:
    inputs_dir = server.data_dir / "vault" / "inputs"  # type: ignore[attr-defined]
    before = set(inputs_dir.rglob("*.png"))
    response = httpx.post(
        f"{server.base}/sdapi/v1/img2img",
        json={"prompt": "x" * 2001, "init_images": [b64(noise_image(seed=32))], **SMALL},
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert "2000" in response.text
    assert set(inputs_dir.rglob("*.png")) == before
