"""provider "rundiffusion" against a second, real Darkroom process serving AUTOMATIC1111's
API: the pixels that come back through the provider are the remote's own render."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
from PIL import Image

from conftest import AppFactory, pixels, render
from processes import ServerProcess

FAST = {"remote_poll": 0.05, "remote_retry_base": 0.01, "remote_retries": 3}


def remote_render(base: str, body: dict) -> bytes:
    """The remote's own render of `body` through its contract API."""
    submitted = httpx.post(f"{base}/image/generate", json=body, timeout=30).json()
    deadline = time.monotonic() + 120
    while True:
        status = httpx.get(submitted["poll_url"], timeout=30).json()
        if status["status"] in ("completed", "failed"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["status"] == "completed", status
    image = httpx.get(status["images"][0]["url"], timeout=30).content
    return Image.open(io.BytesIO(image)).convert("RGB").tobytes()


def test_rundiffusion_renders_on_the_remote_with_its_loras_and_seed(
    make_client: AppFactory, models_dir: Path, tmp_path: Path
) -> None:
    with ServerProcess(tmp_path / "remote", models_dir, tmp_path / "remote.log") as remote:
        client = make_client(rundiffusion_url=remote.base, **FAST)
        local_lora = client.get("/loras/available").json()[0]
        settings = {"sampler": "DPM++ 2M Karras", "seed": 1234, "cfg_scale": 6.0}
        body = render(
            client, "a red fox", settings=settings,
            loras=[{"id": local_lora["id"], "weight": 0.8}], options={"provider": "rundiffusion"},
        )  # fmt: skip
        image = body["images"][0]
        assert image["metadata"]["provider"] == "rundiffusion"
        assert image["metadata"]["seed"] == 1234
        assert image["metadata"]["model"] == "tiny-sdxl"
        # The same request on the remote itself, its LoRA found by name there.
        remote_lora = next(
            lora for lora in httpx.get(f"{remote.base}/loras/available").json()
            if lora["name"] == local_lora["name"]
        )  # fmt: skip
        own = remote_render(
            remote.base,
            {
                "prompt": "a red fox",
                "settings": {"width": 256, "height": 256, "steps": 10, **settings},
                "loras": [{"id": remote_lora["id"], "weight": 0.8}],
                "options": {"format": "png"},
            },
        )
        assert pixels(client, body) == own
        # Both were ordinary generations on the remote, the LoRA tag found there by name.
        history = httpx.get(f"{remote.base}/generations/history").json()["items"]
        used = [{"id": remote_lora["id"], "weight": 0.8}]
        assert [item["loras"] for item in history] == [used, used]
        health = client.get("/health").json()["providers"]["rundiffusion"]
        assert health["configured"] and health["reachable"] is True
        assert health["url"] == remote.base
