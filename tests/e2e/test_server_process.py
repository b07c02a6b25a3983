"""The real `darkroom serve` process, as the README's curl examples drive it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from processes import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`darkroom serve` on an empty models dir: the tiny model is built on first use."""
    with ServerProcess(tmp_path / "data", tmp_path / "models", tmp_path / "server.log") as server:
        yield server.base, tmp_path
        assert server.stop() == 0, server.log.read_text()


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
    submitted = time.monotonic()
    poll_url = response.json()["poll_url"]
    assert poll_url.startswith(f"{base}/api:_WUcacrv/generations/")
    deadline = time.monotonic() + 60
    while (status := httpx.get(poll_url).json())["status"] != "completed":
        assert status["status"] != "failed" and time.monotonic() < deadline, status
        time.sleep(0.2)
    took = time.monotonic() - submitted
    # Before any job completed, the estimate comes from a render timed on this device at
    # start-up (not a GPU's speed, which made a CPU's first estimate 50x too short).
    estimated = response.json()["estimated_time"]
    print(f"first estimate {estimated:.2f} s, took {took:.2f} s")
    assert took / 4 < estimated < took * 4, (estimated, took)
    image = httpx.get(status["images"][0]["url"])
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content[:3] == b"\xff\xd8\xff"


def test_example_client_script_downloads_images(server: tuple[str, Path]) -> None:
    base, tmp_path = server
    script = Path(__file__).resolve().parents[2] / "scripts" / "client.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "a red barn",
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
        env={**os.environ, "DARKROOM_URL": base + "/"},  # as the darkroom command takes it
    )
    assert result.returncode == 0, result.stderr
    seeds = sorted(int(p.stem.rsplit("-", 1)[1]) for p in (tmp_path / "out").glob("*.png"))
    assert seeds == [9, 10]
