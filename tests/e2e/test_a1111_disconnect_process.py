"""An AUTOMATIC1111 call whose caller hangs up before its image is cancelled: nothing is
rendered for nobody, and nothing is charged (server/api/blocking.py, as OpenAI's calls)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from processes import ServerProcess


def test_a_txt2img_whose_caller_hangs_up_is_cancelled(tmp_path: Path, models_dir: Path) -> None:
    # No devices: the job waits in the queue until its caller gives up.
    with ServerProcess(tmp_path / "data", models_dir, tmp_path / "log", "--devices", "none") as s:
        body = {"prompt": "a boat", "steps": 10, "width": 256, "height": 256}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.base}/sdapi/v1/txt2img", json=body, timeout=2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            item = httpx.get(f"{s.base}/generations/history").json()["items"][0]
            if item["status"] == "failed":
                break
            time.sleep(0.1)
        assert item["status"] == "failed" and item["error"]["code"] == "CANCELLED"
        assert item["credits_used"] == 0
