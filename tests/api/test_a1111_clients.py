"""Open WebUI's and SillyTavern's request sequences against AUTOMATIC1111's API, written
from their published source, with the empty `Authorization: Basic ` header both send when
no credentials are configured (ignored in open mode)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import AppFactory
from server.cli import main

EMPTY_BASIC = {"authorization": "Basic "}


@pytest.fixture
def database_url(engine_per_test: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return engine_per_test


def decode(image: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image)))


def open_webui_generate(client: TestClient, headers: dict, model: str) -> list[Image.Image]:
    """open-webui/open-webui, backend/open_webui/routers/images.py: set_image_model (GET
    /options, then POST the whole dict back with sd_model_checkpoint changed), get_models
    (GET /sd-models: id = title), image_generations (GET /options via get_image_model,
    then POST /txt2img with prompt, batch_size, width, height, steps and negative_prompt,
    every answer read with `await r.json()`; images decoded as bare base64 PNG)."""
    options = client.get("/sdapi/v1/options", headers=headers).json()
    if model != options["sd_model_checkpoint"]:
        options["sd_model_checkpoint"] = model
        posted = client.post("/sdapi/v1/options", json=options, headers=headers)
        assert posted.status_code == 200, posted.text  # r.raise_for_status()
    models = client.get("/sdapi/v1/sd-models", headers=headers).json()
    chosen = client.get("/sdapi/v1/options", headers=headers).json()["sd_model_checkpoint"]
    assert chosen == models[0]["title"]  # a title, whichever alias was posted
    data = {"prompt": "a cozy cabin", "batch_size": 2, "width": 256, "height": 256, "steps": 10}
    data["negative_prompt"] = "people"
    res = client.post("/sdapi/v1/txt2img", json=data, headers=headers)
    assert res.status_code == 200, res.text
    body = res.json()
    json.loads(body["info"])  # stored with each image as 'info'
    return [decode(image) for image in body["images"]]


def test_open_webui_in_open_mode(client: TestClient) -> None:
    title = client.get("/sdapi/v1/sd-models").json()[0]["title"]
    images = open_webui_generate(client, EMPTY_BASIC, title)
    assert [image.size for image in images] == [(256, 256)] * 2


def test_open_webui_with_api_auth(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client()
    assert main(["users", "add", "owui", "--data-dir", str(tmp_path / "data")]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    # get_automatic1111_api_auth: 'Basic ' + base64(AUTOMATIC1111_API_AUTH), "user:password"
    auth = {"authorization": "Basic " + base64.b64encode(f"owui:{token}".encode()).decode()}
    assert client.get("/sdapi/v1/options", headers=EMPTY_BASIC).status_code == 401
    model = client.get("/sdapi/v1/sd-models", headers=auth).json()[0]["model_name"]
    assert len(open_webui_generate(client, auth, model)) == 2  # a model name is accepted too


def test_sillytavern_sequence_in_open_mode(client: TestClient) -> None:
    """SillyTavern/SillyTavern, src/endpoints/stable-diffusion.js (router.post '/ping',
    '/upscalers', '/vaes', '/samplers', '/schedulers', '/models', '/get-model',
    '/set-model', '/generate'): every URL's pathname set to '/sdapi/v1/…', every call with
    `Authorization: getBasicAuthHeader(auth)` ('Basic ' + base64 of '' when unset); the
    body of '/generate' is public/scripts/extensions/stable-diffusion/index.js's
    generateAutoImage, forwarded whole (with its own `url` and `auth` keys)."""
    ping = client.get("/sdapi/v1/options", headers=EMPTY_BASIC)
    assert ping.status_code == 200
    upscalers = client.get("/sdapi/v1/upscalers", headers=EMPTY_BASIC).json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    modes = client.get("/sdapi/v1/latent-upscale-modes", headers=EMPTY_BASIC).json()
    assert "Latent (nearest-exact)" in [m["name"] for m in modes]
    assert client.get("/sdapi/v1/sd-vae", headers=EMPTY_BASIC).json() == []
    samplers = [s["name"] for s in client.get("/sdapi/v1/samplers", headers=EMPTY_BASIC).json()]
    schedulers = client.get("/sdapi/v1/schedulers", headers=EMPTY_BASIC).json()
    assert "DDIM" in samplers and "normal" in [s["name"] for s in schedulers]
    models = client.get("/sdapi/v1/sd-models", headers=EMPTY_BASIC).json()
    current = client.get("/sdapi/v1/options", headers=EMPTY_BASIC).json()["sd_model_checkpoint"]
    assert current == models[0]["title"]
    # set-model: POST {sd_model_checkpoint}, then poll /progress until idle
    set_model = client.post(
        "/sdapi/v1/options", json={"sd_model_checkpoint": current}, headers=EMPTY_BASIC
    )
    assert set_model.status_code == 200
    progress = client.get("/sdapi/v1/progress", headers=EMPTY_BASIC).json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
    body = {
        "url": "http://localhost:7860",  # getSdRequestBody()
        "auth": "",
        "prompt": "a knight, portrait",
        "negative_prompt": "lowres",
        "sampler_name": "DDIM",  # SillyTavern's defaults: DDIM, normal, 20 steps, scale 7
        "scheduler": "normal",
        "steps": 10,
        "cfg_scale": 7,
        "width": 256,
        "height": 256,
        "restore_faces": False,
        "enable_hr": False,
        "hr_upscaler": "Latent",
        "hr_scale": 2.0,
        "denoising_strength": 0.7,
        "hr_second_pass_steps": 0,
        # seed: undefined when random (absent from the JSON)
        "override_settings": {"CLIP_stop_at_last_layers": 1},  # sd_vae: undefined
        "override_settings_restore_afterwards": True,
        "clip_skip": 1,
        "save_images": True,
        "send_images": True,
        "do_not_save_grid": False,
        "do_not_save_samples": False,
    }
    result = client.post("/sdapi/v1/txt2img", json=body, headers=EMPTY_BASIC)
    assert result.status_code == 200, result.text
    image = decode(result.json()["images"][0])
    assert image.size == (256, 256)
    assert "Sampler: DDIM" in image.text["parameters"]
    # Its user ticks hires fix: the same body with enable_hr (a 422 before issue 24).
    hires = client.post("/sdapi/v1/txt2img", json={**body, "enable_hr": True, "seed": 1},
                        headers=EMPTY_BASIC)  # fmt: skip
    assert hires.status_code == 200, hires.text
    image = decode(hires.json()["images"][0])
    assert image.size == (512, 512)
    assert "Hires upscale: 2, Hires upscaler: Latent" in image.text["parameters"]
    # The socket-close handler: POST /interrupt with no body; nothing is running now.
    assert client.post("/sdapi/v1/interrupt", headers=EMPTY_BASIC).status_code == 200
