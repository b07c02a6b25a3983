"""AUTOMATIC1111's API under Darkroom's house rules (in-process): a txt2img is an ordinary
generation (history, credits, identical pixels and infotext to /image/generate), Basic
auth, error shapes, and interrupts that reach only the caller's own job."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import SMALL, AppFactory, bearer, fetch_image, render
from fakes import Fake, Solid, Stalls
from server.cli import main

TXT = "/sdapi/v1/txt2img"
BODY = {"prompt": "a red fox", "seed": 42, "sampler_name": "Euler", **SMALL}


@pytest.fixture
def database_url(engine_per_test: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return engine_per_test


def basic(token: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str, *flags: str) -> str:
    assert main(["users", "add", name, "--data-dir", str(data_dir), *flags]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def png(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def test_txt2img_is_an_ordinary_generation_with_the_same_pixels_and_infotext(
    client: TestClient,
) -> None:
    response = client.post(TXT, json={**BODY, "negative_prompt": "blurry"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1 and not body["images"][0].startswith("data:")
    ours = png(body["images"][0])
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42] and info["sampler_name"] == "Euler"
    assert body["parameters"]["prompt"] == "a red fox"
    text = ours.text["parameters"]
    assert info["infotexts"] == [text]
    assert text.startswith("a red fox\nNegative prompt: blurry\nSteps: 10, Sampler: Euler, ")
    # The schedule is named, never "Automatic": the text means the same to A1111 and to
    # Darkroom's own API (server/jobs/infotext.py).
    assert "Schedule type: Uniform, CFG scale: 7.0, Seed: 42, Size: 256x256, Model hash: " in text
    assert f"Model: tiny-sdxl, Version: {info['version']}" in text

    contract = render(
        client,
        "a red fox",
        settings={"sampler": "euler", "cfg_scale": 7.0, "seed": 42, "negative_prompt": "blurry"},
    )
    theirs = fetch_image(client, contract["images"][0]["url"])
    assert ours.convert("RGB").tobytes() == theirs.convert("RGB").tobytes()
    assert theirs.text["parameters"] == text  # one infotext builder for both APIs

    history = client.get("/generations/history").json()["items"]
    assert history[1]["request_id"] == info["request_id"]
    assert history[1]["status"] == "completed" and history[1]["credits_used"] > 0


def test_basic_auth_with_the_token_as_password(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Fake(Solid()))
    token = add_user(capsys, tmp_path / "data", "alice", "--credits", "10")
    assert client.get("/sdapi/v1/options", headers=basic(token)).status_code == 200
    assert client.get("/sdapi/v1/options", headers=bearer(token)).status_code == 200
    for headers in ({}, {"Authorization": "Basic "}, basic("wrong"), {"Authorization": "Basic %"}):
        refused = client.get("/sdapi/v1/options", headers=headers)
        assert refused.status_code == 401
        assert set(refused.json()) == {"error", "detail", "body", "errors"}
        assert refused.headers["www-authenticate"].startswith("Basic")
    # Basic works on Darkroom's own API too
    assert client.get("/account", headers=basic(token)).json()["user"] == "alice"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 151}, "steps"),
        ({"width": 4096}, "width"),
        ({"height": 200}, "height"),
        ({"cfg_scale": 50}, "cfg_scale"),
        ({"batch_size": 3, "n_iter": 3}, "batch_size"),
        ({"steps": "many"}, "steps"),
        ({"enable_hr": True, "hr_upscaler": "4x-UltraSharp"}, "hr_upscaler"),
        ({"restore_faces": True}, "restore_faces"),
        ({"styles": ["cinematic"]}, "styles"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"alwayson_scripts": {"ControlNet": {"args": []}}}, "alwayson_scripts"),
        ({"sampler_name": "DPM fast"}, "sampler_name"),
        ({"scheduler": "align_your_steps"}, "sampler_name"),
        ({"prompt": "<lora:tiny-lora-0:0.5:0.8>"}, "prompt"),
        ({"prompt": "a fox <lora:tiny-lora-0:3>"}, "prompt"),
        ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings"),
    ],
)
def test_validation_is_fastapi_422_naming_the_field(
    client: TestClient, change: dict, field: str
) -> None:
    response = client.post(TXT, json={**BODY, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all(set(d) == {"loc", "msg", "type"} for d in detail)
    assert any(d["loc"][:2] == ["body", field] for d in detail), detail


def test_no_op_values_and_unknown_fields_are_accepted(client: TestClient) -> None:
    response = client.post(
        TXT,
        json={
            **BODY,
            "enable_hr": False,
            "restore_faces": False,
            "alwayson_scripts": {},
            "save_images": True,
            "send_images": False,
            "eta": 1.0,
            "s_noise": 1,
            "seed_resize_from_w": 0,
            "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": None},
            "url": "http://localhost:7860",  # SillyTavern forwards its own keys
            "hr_upscaler": "Latent",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["images"] == []  # send_images: false


def test_bad_bodies_never_500(client: TestClient) -> None:
    for raw in (b"{", b"[1]", b'"x"', b"\xff"):
        response = client.post(TXT, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (raw, response.text)
    assert client.post("/sdapi/v1/png-info", json={"image": "not an image"}).status_code == 422
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": 3}).status_code == 422


def test_interrupt_stops_only_the_callers_txt2img(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Stalls(Solid()))
    alice = add_user(capsys, tmp_path / "data", "alice")
    bob = add_user(capsys, tmp_path / "data", "bob")
    answers: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: answers.update(r=client.post(TXT, json=BODY, headers=basic(alice)))
    )
    thread.start()
    deadline = time.monotonic() + 30
    while client.get("/sdapi/v1/progress", headers=basic(alice)).json()["progress"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    idle = client.get("/sdapi/v1/progress", headers=basic(bob)).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    assert client.post("/sdapi/v1/interrupt", headers=basic(bob)).json() == {}
    time.sleep(0.3)
    assert thread.is_alive()  # bob's interrupt did nothing to alice's call
    busy = client.get("/sdapi/v1/progress", headers=basic(alice)).json()
    assert busy["state"]["job_count"] == 1 and busy["state"]["sampling_steps"] == 10
    assert client.post("/sdapi/v1/interrupt", headers=basic(alice)).json() == {}
    thread.join(30)
    response = answers["r"]
    assert response.status_code == 200, response.text
    assert response.json()["images"] == []
    assert client.get("/sdapi/v1/progress", headers=basic(alice)).json()["state"]["job_count"] == 0
    item = client.get("/generations/history", headers=bearer(alice)).json()["items"][0]
    assert item["error"]["code"] == "CANCELLED" and item["credits_used"] == 0


def test_infotext_reads_back_as_a1111_parses_it() -> None:
    from server.jobs import infotext

    text = infotext.build(
        prompt="a fox, <lora:ink:0.5>",
        negative_prompt="blurry",
        steps=20,
        sampler="DPM++ 2M",
        schedule="Automatic",
        cfg_scale=7,
        seed=1,
        width=512,
        height=768,
        model_hash="0123456789abcdef",
        model_name="sdxl: base",
        lora_hashes=[("ink", "a" * 64)],
    )
    assert text.splitlines()[2] == (
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7.0, Seed: 1, "
        'Size: 512x768, Model hash: 0123456789, Model: "sdxl: base", '
        f'Lora hashes: "ink: {"a" * 12}", Version: {infotext.VERSION}'
    )
    parsed = infotext.parse(text)
    assert parsed["Prompt"] == "a fox, <lora:ink:0.5>" and parsed["Negative prompt"] == "blurry"
    assert parsed["Model"] == "sdxl: base" and parsed["Lora hashes"] == f"ink: {'a' * 12}"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")


def test_lora_tag_forms(client: TestClient) -> None:
    for prompt in (
        "a fox <lora:tiny-lora-0:te=0.5:unet=0.5>",
        "a fox <lyco:tiny-lora-0:0.5:0.5>",
        "a fox <lora:tiny-lora-0:0.25> <lora:tiny-lora-0:0.25>",  # weights add up
    ):
        response = client.post(TXT, json={**BODY, "prompt": prompt})
        assert response.status_code == 200, response.text
        text = json.loads(response.json()["info"])["infotexts"][0]
        assert text.startswith(prompt + "\n") and "Lora hashes: " in text
    loras = client.get("/generations/history").json()["items"]
    assert all(item["loras"][0]["weight"] == 0.5 for item in loras)
