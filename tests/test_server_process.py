"""The real `darkroom serve` process, as the README's curl examples drive it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`darkroom serve` on an empty models dir: the tiny model is built on first use."""
    port = free_port()
    env = {
        **os.environ,
        "DARKROOM_PORT": str(port),
        "DARKROOM_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--model",
            "tiny",
            "--models-dir",
            str(tmp_path / "models"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError((tmp_path / "server.log").read_text())
        yield base, tmp_path
    finally:
        process.terminate()
        # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit says why.
        assert process.wait(30) in (0, -signal.SIGTERM)
        log.close()


def test_serve_builds_tiny_model_and_renders_a_real_image(server: tuple[str, Path]) -> None:
    base, tmp_path = server
    health = httpx.get(f"{base}/health").json()
    assert health["model"] == "tiny" and health["device"] == "cpu"
    assert (tmp_path / "models" / "checkpoints" / "tiny-sdxl" / "model_index.json").exists()
    assert len(httpx.get(f"{base}/api:_WUcacrv/loras/available").json()) == 2

    response = httpx.post(
        f"{base}/api:_WUcacrv/image/generate",
        json={
            "prompt": "a lighthouse at dusk",
            "settings": {"width": 256, "height": 256, "steps": 10, "seed": 1},
        },
    )
    assert response.status_code == 202
    poll_url = response.json()["poll_url"]
    assert poll_url.startswith(f"{base}/api:_WUcacrv/generations/")
    deadline = time.monotonic() + 60
    while (status := httpx.get(poll_url).json())["status"] != "completed":
        assert status["status"] != "failed" and time.monotonic() < deadline, status
        time.sleep(0.2)
    image = httpx.get(status["images"][0]["url"])
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content[:3] == b"\xff\xd8\xff"


def test_example_client_script_downloads_images(server: tuple[str, Path]) -> None:
    base, tmp_path = server
    script = Path(__file__).resolve().parents[1] / "scripts" / "client.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "a red barn",
            "--server",
            base,
            "--steps",
            "10",
            "--size",
            "256",
            "--images",
            "2",
            "--seed",
            "9",
            "--lora",
            "1:0.5",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seeds = sorted(int(p.stem.rsplit("-", 1)[1]) for p in (tmp_path / "out").glob("*.png"))
    assert seeds == [9, 10]
