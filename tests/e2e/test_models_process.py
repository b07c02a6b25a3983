"""A real `darkroom serve --model FILE.safetensors`: a single-file SDXL checkpoint served
with no network and an empty Hugging Face cache, beside the folder it was converted from."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from checkpoint_builders import build_tiny_xl, to_single_file
from processes import ServerProcess


def rendered(base: str, **settings: object) -> tuple[dict, bytes]:
    body = {"prompt": "a lighthouse", "settings": {"width": 256, "height": 256, "steps": 10,
                                                    "seed": 3, **settings}}  # fmt: skip
    response = httpx.post(f"{base}/image/generate", json=body)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while (status := httpx.get(response.json()["poll_url"]).json())["status"] != "completed":
        assert status["status"] != "failed" and time.monotonic() < deadline, status
        time.sleep(0.1)
    image = httpx.get(status["images"][0]["url"]).content
    return status, Image.open(io.BytesIO(image)).convert("RGB").tobytes()


def test_a_single_file_checkpoint_serves_offline_beside_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    folder = build_tiny_xl(models / "checkpoints" / "xl-folder")
    file = to_single_file(folder, tmp_path / "elsewhere" / "xl-file.safetensors")
    hub = tmp_path / "empty-hf-home"
    hub.mkdir()
    monkeypatch.setenv("HF_HOME", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flags = ("--model", str(file), "--models-loaded", "2")
    with ServerProcess(tmp_path / "data", models, tmp_path / "server.log", *flags) as server:
        listed = {m["name"]: m for m in httpx.get(f"{server.base}/models").json()}
        assert listed["xl-file"]["default"] and listed["xl-file"]["format"] == "single-file"
        assert listed["xl-folder"]["format"] == "diffusers"
        default, from_file = rendered(server.base)
        chosen, from_folder = rendered(server.base, model="xl-folder")
        assert from_file == from_folder
        assert default["images"][0]["metadata"]["model"] == "xl-file"
        assert chosen["images"][0]["metadata"]["model_hash"] == listed["xl-folder"]["hash"]
        listed = {m["name"]: m for m in httpx.get(f"{server.base}/models").json()}
        assert listed["xl-file"]["loaded"] and listed["xl-folder"]["loaded"]  # two held
        assert server.stop() == 0, server.log.read_text()
    assert list(hub.rglob("*")) == []  # nothing was fetched or cached
