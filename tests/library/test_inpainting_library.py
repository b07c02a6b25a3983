"""SDXL inpainting checkpoints in the model library, through the API: listed as
inpainting-only (GET /models, /sdapi/v1/sd-models), chosen by AUTOMATIC1111's img2img with
a mask, refused with the field named for anything else; LoRAs judged as for SDXL base."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from checkpoint_builders import build_tiny_xl, build_tiny_xl_inpainting, to_single_file
from conftest import AppFactory, fetch_image, wait_done
from pipelines import image_ops

SIZE = {"width": 256, "height": 256, "steps": 10}  # the contract takes 10 and up


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny-xl-blocks as a single file, the inpainting model made from it as a folder and a
    single file, and a LoRA that fits tiny-xl-blocks."""
    from diffusers import UNet2DConditionModel

    from pipelines.tiny import write_lora

    root = tmp_path_factory.mktemp("inpainting-library")
    base = build_tiny_xl(root / "base")
    inpaint = build_tiny_xl_inpainting(root / "xl-inpaint")
    lora = write_lora(UNet2DConditionModel.from_pretrained(base / "unet"), root, 0, family="xl")
    return {
        "xl-file": to_single_file(base, root / "xl-file.safetensors"),
        "xl-inpaint": inpaint,
        "xl-inpaint-file": to_single_file(inpaint, root / "xl-inpaint-file.safetensors"),
        "lora": lora,
    }


@pytest.fixture
def library(tmp_path: Path, models_dir: Path, built: dict[str, Path]) -> Path:
    root = tmp_path / "models"
    shutil.copytree(models_dir / "checkpoints" / "tiny-sdxl", root / "checkpoints" / "tiny-sdxl")
    shutil.copytree(models_dir / "loras", root / "loras")
    shutil.copy(built["lora"], root / "loras")
    shutil.copy(built["xl-file"], root / "checkpoints")
    shutil.copy(built["xl-inpaint-file"], root / "checkpoints")
    shutil.copytree(built["xl-inpaint"], root / "checkpoints" / "xl-inpaint")
    return root


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def inputs() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(11)
    init = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 176, 176))
    return init, mask


def a1111_field(response: object) -> tuple[list[str], str]:
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    detail = response.json()["detail"][0]  # type: ignore[attr-defined]
    return detail["loc"], detail["msg"]


def test_inpainting_models_are_listed_and_refused_for_anything_but_inpainting(
    library: Path, make_client: AppFactory
) -> None:
    client = make_client(models_dir=library)
    listed = {entry["name"]: entry for entry in client.get("/models").json()}
    for name, fmt in (("xl-inpaint", "diffusers"), ("xl-inpaint-file", "single-file")):
        entry = listed[name]
        assert (entry["format"], entry["base_model"]) == (fmt, "SDXL inpainting")
        assert entry["compatible"] and entry["inpainting"] and entry["incompatible_reason"] is None
    assert not listed["xl-file"]["inpainting"] and not listed["tiny-sdxl"]["inpainting"]
    sd_models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert sd_models["xl-inpaint"]["inpainting"] and not sd_models["xl-file"]["inpainting"]

    # The contract's text-to-image: a VALIDATION_ERROR naming settings.model.
    response = client.post(
        "/image/generate", json={"prompt": "x", "settings": {"model": "xl-inpaint"}}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "renders only inpainting" in error["details"]["fields"]["settings.model"]
    assert "xl-file" in error["details"]["available"]
    assert "xl-inpaint" not in error["details"]["available"]

    # OpenAI's images API: the model param (its model_not_found), with the reason.
    response = client.post("/v1/images/generations", json={"prompt": "x", "model": "xl-inpaint"})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["param"] == "model" and "renders only inpainting" in error["message"]

    # AUTOMATIC1111: txt2img, hires fix, img2img without a mask name the override.
    init, _ = inputs()
    override = {"sd_model_checkpoint": listed["xl-inpaint"]["title"]}
    calls = {
        "txt2img": {"prompt": "x", **SIZE},
        "hires": {"prompt": "x", **SIZE, "enable_hr": True},
        "img2img": {"prompt": "x", **SIZE, "init_images": [b64(init)]},
    }
    for kind, body in calls.items():
        route = "img2img" if kind == "img2img" else "txt2img"
        response = client.post(
            f"/sdapi/v1/{route}", json={**body, "override_settings": override}
        )
        loc, msg = a1111_field(response)
        assert loc == ["body", "override_settings", "sd_model_checkpoint"], kind
        assert "renders only inpainting" in msg
    # As the user's default model (POST /options) it may be chosen; a txt2img then names it.
    chosen = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "xl-inpaint"})
    assert chosen.status_code == 200, chosen.text
    loc, _ = a1111_field(client.post("/sdapi/v1/txt2img", json=calls["txt2img"]))
    assert loc == ["body", "sd_model_checkpoint"]
    history = client.get("/generations/history?per_page=100").json()["items"]
    assert history == []  # nothing refused was recorded


def test_a1111_inpainting_on_an_inpainting_model(library: Path, make_client: AppFactory) -> None:
    client = make_client(models_dir=library)
    init, mask = inputs()
    outside = np.asarray(image_ops.blur_mask(mask, 4)) == 0
    kept = np.asarray(init)[outside]
    body = {
        "prompt": "a red door", "seed": 3, "denoising_strength": 0.75, "mask": b64(mask),
        "init_images": [b64(init)], "inpainting_fill": 1, "inpaint_full_res": False,
        "cfg_scale": 7.0, **SIZE,
    }  # fmt: skip

    def inpaint(model: str, **more: object) -> tuple[np.ndarray, dict]:
        call = {**body, **more, "override_settings": {"sd_model_checkpoint": model}}
        response = client.post("/sdapi/v1/img2img", json=call)
        assert response.status_code == 200, response.text
        answer = response.json()
        return decode(answer["images"][0]), answer

    first, answer = inpaint("xl-inpaint")
    assert first.shape == (256, 256, 3)
    assert np.array_equal(first[outside], kept)
    assert not np.array_equal(first[~outside], np.asarray(init)[~outside])
    assert "Model: xl-inpaint," in answer["info"] and "Mask blur: 4" in answer["info"]
    again, _ = inpaint("xl-inpaint")
    assert np.array_equal(first, again)  # same seed, same pixels
    other, _ = inpaint("xl-inpaint", seed=4)
    assert not np.array_equal(first, other)
    single, _ = inpaint("xl-inpaint-file")
    assert np.array_equal(single, first)  # the single file is the same model
    # The base model it was made from inpaints differently: the mask and the masked
    # image reach the inpainting model's UNet.
    base, _ = inpaint("xl-file")
    assert np.array_equal(base[outside], kept)
    assert np.abs(base.astype(int) - first)[~outside].mean() > 5
    # The contract's POST /image/generate: with a mask it may name the model (the same
    # job as the A1111 call above, the same pixels); without one, or with a hires fix,
    # settings.model is refused.
    contract = {
        "prompt": "a red door", "init_image": body["init_images"][0], "mask": body["mask"],
        "settings": {
            "model": "xl-inpaint", "seed": 3, "denoising_strength": 0.75, "cfg_scale": 7.0,
            "sampler": "euler", **SIZE,
        },
        "options": {"format": "png"},
    }  # fmt: skip
    submitted = client.post("/image/generate", json=contract)
    assert submitted.status_code == 202, submitted.text
    done = wait_done(client, submitted.json()["request_id"])
    assert done["status"] == "completed", done
    assert np.array_equal(np.asarray(fetch_image(client, done["images"][0]["url"])), first)
    hires = {**contract["settings"], "hires": {"scale": 1.5}}
    for refused in ({**contract, "mask": None}, {**contract, "settings": hires}):
        response = client.post("/image/generate", json=refused)
        assert response.status_code == 400, response.text
        assert "hires fix" in response.json()["error"]["details"]["fields"]["settings.model"]
    # LoRAs: SDXL's rule (the xl LoRA fits, the tiny model's does not).
    styled, _ = inpaint("xl-inpaint", prompt="a red door <lora:xl-lora-0:1>")
    assert np.array_equal(styled[outside], kept)
    assert not np.array_equal(styled, first)
    response = client.post(
        "/sdapi/v1/img2img",
        json={**body, "prompt": "x <lora:tiny-lora-0:1>",
              "override_settings": {"sd_model_checkpoint": "xl-inpaint"}},
    )  # fmt: skip
    loc, msg = a1111_field(response)
    assert loc == ["body", "prompt"] and "do not fit this model" in msg
