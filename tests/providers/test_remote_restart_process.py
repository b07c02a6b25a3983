"""A real Darkroom SIGKILLed while fal renders its job: after a restart it resumes watching
the job by its stored request id (no second submit), completes it and charges it once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from fal_double import KEY, FalDouble

from processes import ServerProcess
from server.cli import main


def wait_status(base: str, request_id: str, headers: dict, wanted: set[str]) -> dict:
    deadline = time.monotonic() + 60
    while True:
        body = httpx.get(f"{base}/generations/{request_id}/status", headers=headers).json()
        if body["status"] in wanted:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_a_killed_server_resumes_its_remote_job_and_charges_once(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data = tmp_path / "data"
    assert main(["users", "add", "alice", "--credits", "10", "--data-dir", str(data)]) == 0
    headers = {"Authorization": f"Bearer {capsys.readouterr().out.strip().splitlines()[-1]}"}
    with FalDouble() as fal:
        monkeypatch.setenv("FAL_KEY", KEY)
        monkeypatch.setenv("DARKROOM_FAL_URL", fal.url)
        monkeypatch.setenv("DARKROOM_REMOTE_POLL", "0.05")
        fal.release.clear()
        log = tmp_path / "server.log"
        with ServerProcess(data, models_dir, log) as first:
            body = {
                "prompt": "a lighthouse",
                "settings": {"width": 256, "height": 256, "steps": 10, "seed": 5},
                "options": {"provider": "fal", "format": "png"},
            }
            submitted = httpx.post(f"{first.base}/image/generate", json=body, headers=headers)
            request_id = submitted.json()["request_id"]
            wait_status(first.base, request_id, headers, {"processing"})
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert len(fal.submits) == 1
        with ServerProcess(data, models_dir, log) as second:
            time.sleep(0.3)  # it is watching again, not submitting again
            assert len(fal.submits) == 1
            fal.release.set()
            done = wait_status(second.base, request_id, headers, {"completed", "failed"})
            assert done["status"] == "completed", done
            assert done["images"][0]["metadata"]["provider"] == "fal"
            cost = 256 * 256 / 1024**2 * 10 / 30
            account = httpx.get(f"{second.base}/account", headers=headers).json()["credits"]
            assert account["balance"] == pytest.approx(10 - cost, abs=1e-4)
            assert account["held"] == 0
        assert len(fal.submits) == 1 and fal.cancels == []
