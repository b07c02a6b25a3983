"""Image to image and the hires fix through the contract's POST /image/generate, on both
database engines: strength, inpainting, hires size, credits as AUTOMATIC1111's routes
charge, the inputs kept out of the stored request, and bad images in the contract's
error format."""

from __future__ import annotations

import base64
import io
import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import Preloaded, wait_done, wait_healthy
from server.app import create_app
from server.config import Settings

BODY_LIMIT = 64 * 1024  # the default; a 256 px noise PNG (~200 KB) is far above it
BASE = {"steps": 10, "seed": 3}


@pytest.fixture(scope="module")
def database_url(module_engine: str | None) -> str | None:
    return module_engine


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    tiny_renderer: Preloaded,
    database_url: str | None,
) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("contract-img2img"),
        database_url=database_url,
        models_dir=models_dir,
        model="tiny",
        poll_rate=0.0,
        allowed_hosts="testserver",
        max_body_bytes=BODY_LIMIT,
        max_image_bytes=1024 * 1024,
        max_image_pixels=2048 * 2048,
    )
    with TestClient(create_app(settings, tiny_renderer)) as client:
        wait_healthy(client)
        yield client


def gradient(size: int = 256) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    planes = [np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))]
    return Image.fromarray(np.stack([*planes, np.full((size, size), 128, np.uint8)], -1))


def noise(size: int = 256, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def square_mask(size: int = 256) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (64, 64, 160, 160))
    return mask


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def b64(image: Image.Image | bytes, data_url: bool = False) -> str:
    text = base64.b64encode(image if isinstance(image, bytes) else png(image)).decode()
    return f"data:image/png;base64,{text}" if data_url else text


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def submit(app: TestClient, body: dict[str, Any], headers: dict | None = None) -> Any:
    body = {"prompt": "a barn", "options": {"format": "png"}, **body}
    return app.post("/image/generate", json=body, headers=headers)


def render(app: TestClient, **body: Any) -> tuple[dict[str, Any], Image.Image]:
    response = submit(app, body)
    assert response.status_code == 202, response.text
    done = wait_done(app, response.json()["request_id"])
    assert done["status"] == "completed", done
    image = Image.open(io.BytesIO(app.get(done["images"][0]["url"]).content))
    return done, image


def distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(arr(a) - arr(b)).mean())


def test_strength_decides_how_far_from_the_init_image(app: TestClient) -> None:
    init = gradient()
    # steps x strength < 1: the init image through the VAE, no denoising at all
    _, encoded = render(app, init_image=b64(init), settings={**BASE, "denoising_strength": 0.05})
    assert encoded.size == (256, 256)  # absent width/height: the init image's size
    low_body, low = render(
        app, init_image=b64(init, data_url=True), settings={**BASE, "denoising_strength": 0.2}
    )
    _, high = render(app, init_image=b64(init), settings={**BASE, "denoising_strength": 0.9})
    _, again = render(app, init_image=b64(init), settings={**BASE, "denoising_strength": 0.2})
    assert np.array_equal(arr(low), arr(again))  # same seed, same pixels
    assert distance(low, encoded) < distance(high, encoded)
    assert distance(low, encoded) > 0
    text = low.info["parameters"]
    assert "Denoising strength: 0.2" in text and "Size: 256x256" in text
    # Stored: the inputs by name in the vault, never the base64.
    detail = app.get(f"/generations/{low_body['request_id']}").json()
    assert detail["inputs"]["init_image"]["width"] == 256
    kept = app.get(detail["inputs"]["init_image"]["url"])
    assert np.array_equal(arr(Image.open(io.BytesIO(kept.content))), arr(init))
    state = app.app.state.darkroom  # type: ignore[attr-defined]
    row = state.store.generation_by_id(low_body["generation_id"])
    stored = json.loads(row["request_json"])
    assert "init_image" not in stored and len(row["request_json"]) < 4000
    assert "denoising_strength" not in stored["settings"]
    assert stored["image_job"]["image"]["denoising_strength"] == 0.2


def test_inpainting_keeps_the_pixels_outside_the_mask(app: TestClient) -> None:
    init, mask = noise(seed=2), square_mask()
    settings = {**BASE, "mask_blur": 0, "denoising_strength": 0.9}
    _, out = render(app, init_image=b64(init), mask=b64(mask), settings=settings)
    outside = np.asarray(mask) == 0
    assert np.array_equal(arr(out)[outside], arr(init)[outside])
    assert not np.array_equal(arr(out)[~outside], arr(init)[~outside])
    text = out.info["parameters"]
    assert "Mask blur: 0" in text and "Masked content: original" in text


def test_credits_are_what_automatic1111s_routes_charge(app: TestClient) -> None:
    init = b64(noise(seed=4))
    contract, _ = render(app, init_image=init, settings={**BASE, "denoising_strength": 0.5,
                                                         "width": 256, "height": 256})  # fmt: skip
    a1111 = app.post("/sdapi/v1/img2img", json={
        "prompt": "a barn", "init_images": [init], "denoising_strength": 0.5, "seed": 3,
        "steps": 10, "width": 256, "height": 256,
    })  # fmt: skip
    assert a1111.status_code == 200, a1111.text
    ident = json.loads(a1111.json()["info"])["request_id"]
    assert contract["credits_used"] == pytest.approx(5 / (16 * 30), abs=1e-4)
    assert app.get(f"/generations/{ident}").json()["credits_used"] == contract["credits_used"]


def test_hires_fix_doubles_the_size(app: TestClient) -> None:
    hires = {"steps": 3, "upscaler": "Lanczos"}
    settings = {**BASE, "cfg_scale": 7.0, "width": 256, "height": 256, "hires": hires}
    done, image = render(app, settings=settings)
    assert image.size == (512, 512)
    text = image.info["parameters"]
    assert "Size: 256x256" in text and "Hires upscale: 2" in text
    assert "Hires steps: 3" in text and "Hires upscaler: Lanczos" in text
    assert "Denoising strength: 0.7" in text
    a1111 = app.post("/sdapi/v1/txt2img", json={
        "prompt": "a barn", "seed": 3, "steps": 10, "width": 256, "height": 256,
        "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 3, "hr_upscaler": "Lanczos",
    })  # fmt: skip
    assert a1111.status_code == 200, a1111.text
    ident = json.loads(a1111.json()["info"])["request_id"]
    assert app.get(f"/generations/{ident}").json()["credits_used"] == done["credits_used"]
    # 256 px x 10 steps, then 512 px x 3 steps
    assert done["credits_used"] == pytest.approx((10 / 16 + 3 / 4) / 30, abs=1e-4)
    # The same job as A1111's (its cfg_scale default is 7): the same pixels.
    assert image.tobytes() == Image.open(io.BytesIO(base64.b64decode(
        a1111.json()["images"][0]))).tobytes()  # fmt: skip


def test_an_image_to_image_with_a_hires_fix(app: TestClient) -> None:
    """An edit rendered at its size, then upscaled and denoised again: twice the size,
    charged for both passes, its infotext read back as both (the first pass's strength
    where AUTOMATIC1111 reads it)."""
    init = gradient()
    hires = {"steps": 2, "upscaler": "Lanczos", "denoising_strength": 0.4}
    settings = {**BASE, "denoising_strength": 0.5, "hires": hires}
    done, image = render(app, init_image=b64(init), settings=settings)
    assert image.size == (512, 512)
    # 256 px x ceil(10 x 0.5) steps, then 512 px x 2 steps
    assert done["credits_used"] == pytest.approx((5 / 16 + 2 / 4) / 30, abs=1e-4)
    text = image.info["parameters"]
    assert "Denoising strength: 0.5" in text and "Hires denoising strength: 0.4" in text
    assert "Hires upscale: 2" in text
    plain, _ = render(app, init_image=b64(init), settings={**BASE, "denoising_strength": 0.5})
    plain_image = Image.open(io.BytesIO(app.get(plain["images"][0]["url"]).content))
    upscaled = plain_image.resize((512, 512), Image.Resampling.LANCZOS)
    assert 0 < distance(image, upscaled) < distance(image, noise(512))  # refined, not redrawn


def _png_bomb(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def test_bad_requests_are_answered_in_the_contracts_format(app: TestClient) -> None:
    small = b64(noise(64))
    cases: dict[str, tuple[dict[str, Any], int, str, str]] = {
        "truncated": ({"init_image": b64(png(noise())[:3000])}, 422, "VALIDATION_ERROR",
                      "init_image"),
        "not base64": ({"init_image": "@@@ not base64 @@@"}, 422, "VALIDATION_ERROR",
                       "init_image"),
        "not an image": ({"init_image": small, "mask": b64(b"hello world")}, 422,
                         "VALIDATION_ERROR", "mask"),
        "mask alone": ({"mask": small}, 422, "VALIDATION_ERROR", "mask"),
        "too many pixels": ({"init_image": b64(_png_bomb(5000))}, 400, "VALIDATION_ERROR",
                            "init_image"),
        "hires too large": ({"settings": {"width": 2048, "height": 2048, "hires": {"scale": 4}}},
                            400, "VALIDATION_ERROR", "settings.hires.scale"),
        "bad strength": ({"init_image": small, "settings": {"denoising_strength": 2}}, 400,
                         "VALIDATION_ERROR", "settings.denoising_strength"),
        "bad upscaler": ({"settings": {"hires": {"upscaler": "R-ESRGAN 4x+"}}}, 400,
                         "VALIDATION_ERROR", "settings.hires.upscaler"),
    }  # fmt: skip
    for name, (body, status, code, field) in cases.items():
        response = submit(app, body)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert error["code"] == code and field in error["details"]["fields"], (name, error)
    # Bytes: an image over max_image_bytes, and a body too large without its images.
    big = b64(noise(700))  # ~1.5 MB: over max_image_bytes, within the body limit
    response = submit(app, {"init_image": big})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "LIMIT_EXCEEDED"
    assert response.json()["error"]["details"]["field"] == "init_image"
    padded = submit(app, {"init_image": small, "settings": {"negative_prompt": "x" * BODY_LIMIT}})
    assert padded.status_code == 413 and padded.json()["error"]["code"] == "LIMIT_EXCEEDED"
    assert padded.json()["error"]["details"] == {"field": "body", "limit_bytes": BODY_LIMIT}
    assert app.get("/health").status_code == 200


def test_idempotency_key_replays_the_first_answer(app: TestClient) -> None:
    body = {"init_image": b64(noise(seed=6)), "settings": {**BASE, "denoising_strength": 0.3}}
    key = {"Idempotency-Key": f"img2img-{time.time()}"}
    first = submit(app, body, key)
    again = submit(app, body, key)
    assert first.status_code == again.status_code == 202
    assert again.json()["request_id"] == first.json()["request_id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = submit(app, {**body, "settings": {**BASE, "denoising_strength": 0.4}}, key)
    assert other.status_code == 422
    assert wait_done(app, first.json()["request_id"])["status"] == "completed"


def test_text_to_image_is_unchanged_and_documented(app: TestClient) -> None:
    done, image = render(app, settings={**BASE, "width": 256, "height": 256})
    assert image.size == (256, 256) and "Denoising strength" not in image.info["parameters"]
    assert app.get(f"/generations/{done['request_id']}").json()["inputs"] is None
    schemas = app.get("/openapi.json").json()["components"]["schemas"]
    assert {"init_image", "mask"} <= set(schemas["ImageGenerateBody"]["properties"])
    assert "hires" in schemas["ImageSettings"]["properties"]
