"""AUTOMATIC1111's blocking calls against a real server process: calls whose server is
killed (an img2img rendering, a txt2img waiting) are not rendered and charged for no one
after the restart, the img2img's init image still in the vault (a contract generation in
the same crash is rendered), and a caller who hangs up while waiting for a slot stops
waiting."""

from __future__ import annotations

import base64
import contextlib
import io
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import bearer
from processes import ServerProcess
from server.cli import main
from server.contract import credits_for

SIZE = {"width": 256, "height": 256}


def _png() -> str:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((256, 256)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


INIT = _png()


@contextmanager
def serving(data: Path, models_dir: Path, log: Path) -> Iterator[ServerProcess]:
    """A server given the time a loaded machine needs to start it (the model loads)."""
    server = ServerProcess(data, models_dir, log)
    try:
        server.wait_ready(timeout=600)
        yield server
    finally:
        server.__exit__(None, None, None)


def add_user(capsys: pytest.CaptureFixture[str], data: Path, *flags: str) -> dict[str, str]:
    assert main(["users", "add", "carol", "--data-dir", str(data), *flags]) == 0
    return bearer(capsys.readouterr().out.strip().splitlines()[-1])


def items(base: str, headers: dict[str, str]) -> list[dict]:
    return httpx.get(f"{base}/generations/history", headers=headers).json()["items"]


def blocking_call(
    base: str, headers: dict[str, str], steps: int, timeout: float = 300, **img2img: Any
) -> None:
    """A txt2img (an img2img given its fields) in a thread; what it gets back (or that its
    server died) does not matter."""
    route = "img2img" if img2img else "txt2img"

    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{base}/sdapi/v1/{route}",
                json={"prompt": f"a blocking {route}", "steps": steps, "seed": 3, **SIZE,
                      **img2img},  # fmt: skip
                headers=headers,
                timeout=timeout,
            )

    threading.Thread(target=run, daemon=True).start()


def wait_for(predicate, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_blocking_call_killed_with_its_server_is_cancelled_uncharged(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    carol = add_user(capsys, data, "--credits", "100")
    with serving(data, models_dir, log) as server:
        blocking_call(server.base, carol, steps=40, init_images=[INIT], denoising_strength=1)
        wait_for(lambda: items(server.base, carol))
        [call] = items(server.base, carol)
        status = f"{server.base}/generations/{call['request_id']}/status"
        wait_for(lambda: httpx.get(status, headers=carol).json().get("step", 0) >= 2)
        blocking_call(server.base, carol, steps=10)  # waits behind the img2img
        wait_for(lambda: len(items(server.base, carol)) == 2)
        [waiting] = [i for i in items(server.base, carol) if i["request_id"] != call["request_id"]]
        contract = httpx.post(
            f"{server.base}/image/generate",
            json={"prompt": "a polled job", "settings": {**SIZE, "steps": 10, "seed": 5}},
            headers=carol,
        ).json()
        server.process.kill()
        assert server.process.wait(10) == -signal.SIGKILL

    with serving(data, models_dir, log) as server:
        done = f"{server.base}/generations/{contract['request_id']}/status"
        wait_for(lambda: httpx.get(done, headers=carol).json()["status"] == "completed")
        by_id = {item["request_id"]: item for item in items(server.base, carol)}
        for gone in (call, waiting):
            cancelled = by_id[gone["request_id"]]
            assert cancelled["status"] == "failed"
            assert cancelled["error"]["code"] == "CANCELLED"
            assert cancelled["error"]["details"]["reason"] == "caller_gone"
            assert cancelled["credits_used"] == 0
        kept = f"{server.base}/generations/{call['request_id']}/inputs/init_image"
        init = httpx.get(kept, headers=carol)
        assert init.status_code == 200
        sent = Image.open(io.BytesIO(base64.b64decode(INIT)))
        assert Image.open(io.BytesIO(init.content)).tobytes() == sent.tobytes()
        cost = credits_for(256, 256, 10, 1)
        assert by_id[contract["request_id"]]["credits_used"] == pytest.approx(cost)
        credits = httpx.get(f"{server.base}/account", headers=carol).json()["credits"]
        assert credits["held"] == 0
        assert credits["balance"] == pytest.approx(100 - cost)  # only the contract job
        time.sleep(1)  # nothing renders the cancelled call later
        status = f"{server.base}/generations/{call['request_id']}/status"
        assert httpx.get(status, headers=carol).json()["status"] == "failed"


def test_a_caller_who_hangs_up_stops_waiting_for_a_slot(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    carol = add_user(capsys, data, "--max-active", "1")
    with serving(data, models_dir, log) as server:
        blocking_call(server.base, carol, steps=40)
        wait_for(lambda: items(server.base, carol))
        with pytest.raises(httpx.ReadTimeout):  # waits for the slot, then hangs up
            httpx.post(
                f"{server.base}/sdapi/v1/txt2img",
                json={"prompt": "gave up", "steps": 10, **SIZE},
                headers=carol,
                timeout=2,
            )
        [first] = items(server.base, carol)
        status = f"{server.base}/generations/{first['request_id']}/status"
        wait_for(lambda: httpx.get(status, headers=carol).json()["status"] == "completed")
        time.sleep(2)  # eight admission retries, had it still been waiting
        assert len(items(server.base, carol)) == 1
