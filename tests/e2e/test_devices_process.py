"""Two CPU render processes behind one real server (--devices cpu,cpu): two users' long jobs
render at the same time, and a render process killed mid-job takes only its own device
out, briefly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from processes import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ServerProcess]:
    yield from two_devices(tmp_path_factory.mktemp("devices"), models_dir)


def two_devices(root: Path, models_dir: Path, *flags: str) -> Iterator[ServerProcess]:
    """A server on `--devices cpu,cpu`, users ada and bob (`.tokens`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DARKROOM_DEVICE_RETRY", "1")  # out of service for a second
        process = ServerProcess(
            root / "data", models_dir, root / "server.log", "--devices", "cpu,cpu", *flags
        )
    process.wait_ready(timeout=600)  # two render processes load slowly on a loaded machine
    with process:
        process.tokens = [add_user(root / "data", name) for name in ("ada", "bob")]  # type: ignore[attr-defined]
        yield process


def add_user(data_dir: Path, name: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "users", "add", name, "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}


def submit(server: ServerProcess, auth: dict, steps: int, prompt: str) -> str:
    response = httpx.post(
        f"{server.base}/image/generate",
        headers=auth,
        json={"prompt": prompt, "settings": {"width": 256, "height": 256, "steps": steps}},
    )
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def status(server: ServerProcess, auth: dict, request_id: str) -> dict:
    return httpx.get(f"{server.base}/generations/{request_id}/status", headers=auth).json()


def devices(server: ServerProcess) -> dict[str, dict]:
    return {entry["name"]: entry for entry in httpx.get(f"{server.base}/health").json()["devices"]}


def wait_until(check, timeout: float = 120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
    return result


def test_two_users_long_jobs_render_at_the_same_time(server: ServerProcess) -> None:
    ada, bob = server.tokens  # type: ignore[attr-defined]
    assert set(devices(server)) == {"cpu#0", "cpu#1"}
    # /health turns 200 once one device is ready; the other may still be loading.
    def all_ready() -> dict[str, dict] | None:
        entries = devices(server)
        return entries if {entry["state"] for entry in entries.values()} == {"ready"} else None

    entries = wait_until(all_ready)
    assert len({entry["pid"] for entry in entries.values()} - {None, os.getpid()}) == 2
    jobs = [(ada, submit(server, ada, 150, "ada's")), (bob, submit(server, bob, 150, "bob's"))]
    # Both processing at once, each on its own device.
    wait_until(lambda: all(status(server, a, rid)["status"] == "processing" for a, rid in jobs))
    assert {entry["state"] for entry in devices(server).values()} == {"busy"}
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'darkroom_device_busy{device="cpu#0"} 1.0' in metrics
    assert 'darkroom_device_busy{device="cpu#1"} 1.0' in metrics
    for auth, request_id in jobs:
        done = wait_until(
            lambda a=auth, r=request_id: (b := status(server, a, r))["status"] != "processing"
            and b["status"] != "pending" and b
        )
        assert done["status"] == "completed", done
    assert sorted(entry["jobs_done"] for entry in devices(server).values()) == [1, 1]


def test_a_killed_render_process_takes_only_its_device_out_briefly(server: ServerProcess) -> None:
    ada, bob = server.tokens  # type: ignore[attr-defined]
    doomed = submit(server, ada, 150, "doomed")
    busy = wait_until(lambda: [e for e in devices(server).values() if e["running_jobs"]])
    (victim,) = busy
    os.kill(victim["pid"], signal.SIGKILL)

    out = wait_until(lambda: devices(server)[victim["name"]]["state"] == "out_of_service")
    assert out
    entry = devices(server)[victim["name"]]
    assert "render process exited" in entry["reason"] and entry["failures"] == 1
    # Readiness stays up: the other device works, and renders meanwhile.
    assert httpx.get(f"{server.base}/health/ready").status_code == 200
    other = submit(server, bob, 10, "meanwhile")
    seen_ready = []

    def finished(auth: dict, request_id: str) -> dict | None:
        seen_ready.append(httpx.get(f"{server.base}/health/ready").status_code)
        body = status(server, auth, request_id)
        return body if body["status"] in ("completed", "failed") else None

    assert wait_until(lambda: finished(bob, other))["status"] == "completed"
    # The killed job was re-queued, and completes (on whichever device takes it).
    assert wait_until(lambda: finished(ada, doomed))["status"] == "completed"
    assert set(seen_ready) == {200}
    # The device is back, with a new render process.
    back = wait_until(lambda: (e := devices(server)[victim["name"]])["state"] == "ready" and e)
    assert back["pid"] not in (None, victim["pid"]) and back["reason"] is None
    health = httpx.get(f"{server.base}/health").json()
    assert health["status"] == "ok" and health["worker_alive"] is True
