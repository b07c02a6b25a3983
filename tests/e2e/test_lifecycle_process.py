"""kill -9 and SIGTERM against the real server process: no accepted job or image is lost."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path

import httpx
from PIL import Image

from processes import ServerProcess


def submit(base: str, steps: int, prompt: str = "a harbour") -> dict:
    response = httpx.post(
        f"{base}/image/generate",
        json={
            "prompt": prompt,
            "settings": {"width": 256, "height": 256, "steps": steps, "seed": 5},
        },
    )
    assert response.status_code == 202, response.text
    return response.json()


def status(base: str, request_id: str) -> dict:
    return httpx.get(f"{base}/generations/{request_id}/status").json()


def wait_status(base: str, request_id: str, wanted: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (body := status(base, request_id))["status"] != wanted:
        assert body["status"] != "failed" or wanted == "failed", body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    return body


def assert_image(url: str) -> None:
    response = httpx.get(url)
    assert response.status_code == 200
    Image.open(io.BytesIO(response.content)).verify()


def test_sigkill_mid_render_then_restart_completes_every_job(
    tmp_path: Path, models_dir: Path
) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    with ServerProcess(data, models_dir, log) as server:
        done = wait_status(server.base, submit(server.base, 10)["request_id"], "completed")
        accepted = [submit(server.base, 40, f"job {i}")["request_id"] for i in range(2)]
        deadline = time.monotonic() + 60
        while status(server.base, accepted[0]).get("step", 0) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.process.kill()
        assert server.process.wait(10) == -signal.SIGKILL

    with ServerProcess(data, models_dir, log) as server:
        assert_image(status(server.base, done["request_id"])["images"][0]["vault_url"])
        for request_id in accepted:
            body = wait_status(server.base, request_id, "completed")
            assert_image(body["images"][0]["url"])
        assert server.stop() == 0


def test_sigterm_drains_the_running_job_and_keeps_the_queue(
    tmp_path: Path, models_dir: Path
) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    with ServerProcess(data, models_dir, log, "--drain-timeout", "120") as server:
        running = submit(server.base, 80)["request_id"]
        queued = submit(server.base, 10, "queued")["request_id"]
        wait_status(server.base, running, "processing")
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = httpx.post(f"{server.base}/image/generate", json={"prompt": "late"})
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert httpx.get(f"{server.base}/health/ready").status_code == 503
        assert status(server.base, running)["status"] == "processing"  # polls still answer
        assert server.process.wait(60) == 0
    # The render process went with it, quietly: no leaked-resource warnings at exit.
    assert "leaked" not in log.read_text()

    with ServerProcess(data, models_dir, log) as server:
        finished = status(server.base, running)
        assert finished["status"] == "completed"  # it finished before the exit, not after
        assert_image(finished["images"][0]["url"])
        assert wait_status(server.base, queued, "completed")["images"]
        assert server.stop(signal.SIGINT) == 0
