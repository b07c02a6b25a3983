"""Webhooks against the real `darkroom serve` process: --webhook-allow-private lets a
loopback receiver in, and a delivery still failing at SIGTERM is retried by the next
process on the same data dir, with the same webhook-id."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from processes import ServerProcess
from webhook_receiver import Receiver


def test_delivery_resumes_in_the_next_process(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled schedule: now, 50 ms, 3 s, 18 s...: the third attempt falls after the restart.
    monkeypatch.setenv("DARKROOM_WEBHOOK_RETRY_SCALE", "0.01")
    data, log = tmp_path / "data", tmp_path / "server.log"
    receiver = Receiver()
    receiver.default = (503, {})
    try:
        with ServerProcess(data, models_dir, log, "--webhook-allow-private") as server:
            response = httpx.post(
                f"{server.base}/image/generate",
                json={
                    "prompt": "a harbour",
                    "settings": {"width": 256, "height": 256, "steps": 10, "seed": 5},
                    "options": {"webhook_url": receiver.url},
                },
            )
            assert response.status_code == 202, response.text
            request_id = response.json()["request_id"]
            secret = httpx.get(f"{server.base}/account").json()["webhook_secret"]
            first_base = server.base
            failed = receiver.wait_for(2, timeout=120)
            assert server.stop() == 0
        tried = len(receiver.received)
        receiver.default = (200, {})
        # (The next process may deliver before it reports ready: its model loads meanwhile.)
        with ServerProcess(data, models_dir, log, "--webhook-allow-private") as server:
            deliveries = receiver.wait_for(tried + 1, timeout=60)
            deadline = time.monotonic() + 30
            while (hook := httpx.get(f"{server.base}/generations/{request_id}").json()[
                "webhook"
            ])["state"] != "delivered":
                assert time.monotonic() < deadline, hook
                time.sleep(0.1)
            server.stop()
        assert hook["attempts"] == len(deliveries) and hook["last_status"] == 200
        assert {d.headers["webhook-id"] for d in deliveries} == {failed[0].headers["webhook-id"]}
        body = Webhook(secret).verify(deliveries[-1].body, deliveries[-1].headers)
        assert body["request_id"] == request_id and body["status"] == "completed"
        # Links are rendered under the base the submit arrived on (stored with the delivery).
        assert body["images"][0]["url"].startswith(f"{first_base}/files/")
    finally:
        receiver.close()
