"""Cancellation, timeouts, expiry and failure isolation, seen through the API."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import server.jobs.supervisor
import server.store.vault
from conftest import AppFactory, Preloaded, generate, render, wait_done, wait_healthy
from fakes import Dies, Hangs, OutOfMemory, Solid, Stalls, StallsOnce


def vault_files(client: TestClient) -> set[Path]:
    root = Path(client.app.state.darkroom.vault.root)  # type: ignore[attr-defined]
    return {p for p in root.rglob("*") if p.is_file() and p.name != "signing.key"}


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_cancel_running_and_pending_jobs(make_client: AppFactory, tiny_renderer: Preloaded) -> None:
    stalls = StallsOnce(tiny_renderer)
    client = make_client(renderer=stalls)
    running, queued, after = generate(client), generate(client, "b"), generate(client, "c")
    assert stalls.started.wait(10)
    wait_for(lambda: client.get(running["poll_url"]).json().get("step", 0) > 0)

    cancelled = client.post(f"/generations/{queued['request_id']}/cancel").json()
    assert cancelled["status"] == "failed" and cancelled["error"]["code"] == "CANCELLED"
    stopped = client.delete(f"/generations/{running['request_id']}").json()
    assert stopped["status"] == "failed" and stopped["error"]["code"] == "CANCELLED"
    assert stopped["credits_used"] == 0 and "images" not in stopped

    assert wait_done(client, after["request_id"])["status"] == "completed"
    assert len(vault_files(client)) == 2  # only the last job's image and thumbnail
    again = client.post(f"/generations/{running['request_id']}/cancel").json()
    assert again["error"]["code"] == "CANCELLED" and "already failed" in again["message"]


def test_cancel_finished_job_is_a_harmless_no_op(client: TestClient) -> None:
    body = render(client)
    response = client.post(f"/generations/{body['request_id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert "already completed" in response.json()["message"]
    assert client.get(body["images"][0]["url"]).status_code == 200
    assert client.post("/generations/unknown/cancel").status_code == 404


def test_out_of_memory_splits_the_batch_then_succeeds(
    make_client: AppFactory, tiny_renderer: Preloaded
) -> None:
    oom = OutOfMemory(tiny_renderer, fits=1)
    client = make_client(renderer=oom)
    body = render(client, options={"num_images": 2})
    assert [i["metadata"]["seed"] for i in body["images"]] == [42, 43]
    assert oom.freed == 1 and oom.calls == 3


def test_out_of_memory_fails_with_a_hint_and_stays_healthy(
    make_client: AppFactory, tiny_renderer: Preloaded
) -> None:
    client = make_client(renderer=OutOfMemory(tiny_renderer, fits=0))
    failed = wait_done(client, generate(client)["request_id"])
    assert failed["error"]["code"] == "PROVIDER_ERROR"
    assert failed["error"]["details"]["reason"] == "out_of_memory"
    assert "smaller" in failed["error"]["details"]["hint"]
    assert wait_healthy(client)["status"] == "ok"


def test_slow_job_is_stopped_at_its_timeout(make_client: AppFactory) -> None:
    client = make_client(renderer=StallsOnce(Solid()), job_timeout=0.5)
    slow, next_job = generate(client), generate(client, "next")
    failed = wait_done(client, slow["request_id"])
    assert failed["error"]["code"] == "TIMEOUT"
    assert failed["error"]["details"]["limit_seconds"] == 0.5
    assert wait_done(client, next_job["request_id"])["status"] == "completed", client.get(
        next_job["poll_url"]
    ).json()


def test_hung_job_is_failed_and_readiness_reports_it(
    make_client: AppFactory,
    tiny_renderer: Preloaded,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server.jobs.supervisor, "HANG_GRACE_SECONDS", 0.3)
    hangs = Hangs(Solid())
    client = make_client(renderer=hangs, job_timeout=0.3)
    stuck, queued = generate(client), generate(client, "queued")
    assert wait_done(client, stuck["request_id"])["error"]["code"] == "TIMEOUT"
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["worker_responsive"] is False
    hangs.release.set()
    assert wait_done(client, queued["request_id"])["status"] == "completed"
    assert client.get("/health/ready").status_code == 200
    assert client.get(stuck["poll_url"]).json()["status"] == "failed"  # its late result dropped
    assert len(vault_files(client)) == 2


def test_job_waiting_too_long_expires(make_client: AppFactory, tiny_renderer: Preloaded) -> None:
    stalls = StallsOnce(tiny_renderer)
    client = make_client(renderer=stalls, max_queue_age=0.3)
    first, waiting = generate(client), generate(client, "late")
    time.sleep(0.5)
    client.post(f"/generations/{first['request_id']}/cancel")
    expired = wait_done(client, waiting["request_id"])
    assert expired["error"]["code"] == "EXPIRED" and stalls.calls == 1


def test_dead_worker_is_restarted_and_its_job_retried(
    make_client: AppFactory, tiny_renderer: Preloaded
) -> None:
    dies = Dies(tiny_renderer)
    client = make_client(renderer=dies)
    body = wait_done(client, generate(client)["request_id"])
    assert body["status"] == "completed" and dies.calls == 2
    health = client.get("/health").json()
    assert health["worker_restarts"] == 1 and health["status"] == "ok"


def test_readiness_is_503_while_the_model_cannot_be_reloaded(
    make_client: AppFactory, tiny_renderer: Preloaded
) -> None:
    client = make_client(renderer=Dies(tiny_renderer, failed_reloads=1), device_retry=1.0)
    job = generate(client)
    wait_for(lambda: "error" in client.get("/health").json())
    health = client.get("/health")
    assert health.status_code == 503 and "weights vanished" in health.json()["error"]
    assert client.get("/health/ready").json()["checks"]["model_loaded"] is False
    assert client.get("/health/live").status_code == 200
    assert wait_done(client, job["request_id"])["status"] == "completed"
    assert client.get("/health/ready").status_code == 200


def test_vault_write_failure_leaves_no_partial_files(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = render(client)
    before = vault_files(client)
    write = server.store.vault._write_atomic
    calls = []

    def disk_fills_up(path: Path, data: bytes, mode: int = 0o644) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data, mode)

    monkeypatch.setattr(server.store.vault, "_write_atomic", disk_fills_up)
    failed = wait_done(client, generate(client, options={"num_images": 2})["request_id"])
    assert failed["error"]["code"] == "PROVIDER_ERROR"
    assert failed["error"]["details"]["reason"] == "No space left on device"
    assert vault_files(client) == before
    assert client.get(earlier["images"][0]["vault_url"]).status_code == 200


def test_job_the_server_died_under_too_often_fails(make_client: AppFactory) -> None:
    client = make_client(renderer=Stalls())
    body = generate(client)
    wait_for(lambda: client.get(body["poll_url"]).json()["status"] == "processing")
    store = client.app.state.darkroom.store  # type: ignore[attr-defined]
    # What three crashes mid-render leave behind: still processing, three attempts counted.
    client.app.state.darkroom.worker.stop()  # type: ignore[attr-defined]
    with store.transaction() as db:
        db.execute("UPDATE generations SET status = 'processing', attempts = 3")
    client.close()
    client = make_client(max_attempts=3)
    failed = client.get(body["poll_url"]).json()
    assert failed["status"] == "failed" and failed["error"]["details"]["attempts"] == 3
