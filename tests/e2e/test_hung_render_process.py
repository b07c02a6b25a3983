"""A render process that stops answering (SIGSTOP: as a stuck kernel looks from outside)
behind a real server with two CPU devices: past --job-timeout its job fails as TIMEOUT, the
process is killed and replaced, its device comes back and renders again; the other device
is never touched."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_devices_process import devices, status, submit, two_devices, wait_until

from processes import ServerProcess

JOB_TIMEOUT = 60  # ample for a 10-step 256 px job (15-30 s on a loaded 2-core machine)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hung")
    yield from two_devices(root, models_dir, "--job-timeout", str(JOB_TIMEOUT))


def finished(server: ServerProcess, auth: dict, request_id: str) -> dict | None:
    body = status(server, auth, request_id)
    return body if body["status"] in ("completed", "failed") else None


def test_a_stopped_render_process_is_killed_and_its_device_renders_again(
    server: ServerProcess,
) -> None:
    ada, bob = server.tokens  # type: ignore[attr-defined]
    wait_until(lambda: {e["state"] for e in devices(server).values()} == {"ready"})
    hung = submit(server, ada, 150, "hung")
    (victim,) = wait_until(lambda: [e for e in devices(server).values() if e["running_jobs"]])
    (other,) = [e for e in devices(server).values() if e["name"] != victim["name"]]
    os.kill(victim["pid"], signal.SIGSTOP)

    # The other device serves meanwhile, and the server stays ready.
    meanwhile = submit(server, bob, 10, "meanwhile")
    body = wait_until(lambda: finished(server, bob, meanwhile))
    assert body["status"] == "completed", (body, server.log.read_text()[-4000:])
    assert httpx.get(f"{server.base}/health/ready").status_code == 200

    failed = wait_until(lambda: finished(server, ada, hung))
    assert failed["status"] == "failed" and failed["error"]["code"] == "TIMEOUT", failed
    assert failed["error"]["details"]["limit_seconds"] == JOB_TIMEOUT
    # The stopped process is killed (and reaped), a new one takes its place.
    wait_until(lambda: not Path(f"/proc/{victim['pid']}").exists())
    # A new render process loads the model: minutes on a loaded 2-core machine.
    back = wait_until(
        lambda: (e := devices(server)[victim["name"]])["state"] == "ready" and e, timeout=600
    )
    assert back["pid"] not in (None, victim["pid"]) and back["reason"] is None
    assert "killed" in back["last_reason"] and "hung" in back["last_reason"]
    assert back["outcomes"].get("requeued", 0) == 0  # the timed-out job is not run again

    # The device renders again. Jobs go to whichever device is free, so submit in pairs
    # (one keeps a device busy while the other is taken) until it has done one; small
    # jobs, well inside the short job timeout on a loaded machine.
    for attempt in range(5):
        pair = [(auth, submit(server, auth, 10, f"after {attempt}")) for auth in (ada, bob)]
        for auth, request_id in pair:
            done = wait_until(lambda a=auth, r=request_id: finished(server, a, r))
            assert done["status"] == "completed", (done, server.log.read_text()[-4000:])
        if devices(server)[victim["name"]]["jobs_done"]:
            break
    entries = devices(server)
    assert entries[victim["name"]]["jobs_done"] >= 1
    # The other device was never touched.
    assert entries[other["name"]]["pid"] == other["pid"]
    assert entries[other["name"]]["failures"] == 0
    health = httpx.get(f"{server.base}/health").json()
    assert health["status"] == "ok"
    assert status(server, ada, hung)["status"] == "failed"  # nothing brought it back
