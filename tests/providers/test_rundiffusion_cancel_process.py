"""Cancel is surgical on an AUTOMATIC1111 remote, which has one global /interrupt: a queued
rundiffusion job cancelled while another job renders remotely is dropped before it is
sent, and the remote's running render goes on to the end."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from remote_fixtures import FAST, wait_for

from conftest import AppFactory, generate, wait_done
from processes import ServerProcess


def test_cancelling_a_queued_job_leaves_the_remote_render_alone(
    make_client: AppFactory, models_dir: Path, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        remote = ServerProcess(tmp_path / "remote", models_dir, tmp_path / "remote.log")
        stack.callback(remote.__exit__)
        remote.wait_ready(600)  # a loaded 2-core machine may take minutes to start it
        client = make_client(rundiffusion_url=remote.base, **FAST)
        options = {"provider": "rundiffusion"}
        rendering = generate(client, "long", settings={"steps": 150}, options=options)
        first = f"/generations/{rendering['request_id']}/status"
        wait_for(lambda: client.get(first).json()["step"] > 0, timeout=120)  # on the remote
        queued = generate(client, "queued", options=options)["request_id"]
        second = f"/generations/{queued}/status"
        time.sleep(0.3)  # its runner waits its turn (one call at a time)
        assert client.get(second).json()["status"] == "pending"
        answer = client.post(f"/generations/{queued}/cancel").json()
        assert answer["status"] == "failed" and answer["error"]["code"] == "CANCELLED"
        time.sleep(1.0)  # what an /interrupt would have stopped by now
        still = client.get(first).json()
        assert still["status"] == "processing", "the long job ended too soon to tell"
        done = wait_done(client, rendering["request_id"], timeout=300)
        assert done["status"] == "completed", done
        # the remote rendered the long job to its end and never saw the cancelled one
        history = httpx.get(f"{remote.base}/generations/history").json()["items"]
        assert [(item["prompt"], item["status"]) for item in history] == [("long", "completed")]
        assert "/sdapi/v1/interrupt" not in (tmp_path / "remote.log").read_text()
