"""Several devices on one queue (--devices), in-process with fake renderers: a device that
fails jobs in a row goes out of service, the others carry on, readiness follows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import AppFactory, generate, wait_done
from fakes import Fake, Solid
from pipelines.devices import default_devices, device_labels, parse_devices
from server.app import create_app
from server.config import Settings
from server.jobs.devices import device_settings


class Broken(Fake):
    """Every render fails with an error that is not the request's fault."""

    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("device lost")


class Slow(Fake):
    def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
        time.sleep(0.2)


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def devices_of(client) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {entry["name"]: entry for entry in client.get("/health").json()["devices"]}


def test_a_device_failing_in_a_row_goes_out_and_the_other_carries_on(
    make_client: AppFactory,
) -> None:
    broken, good = Broken(Solid()), Slow(Solid())
    client = make_client(
        renderer=[broken, good], device_failures=2, device_retry=60, max_active_per_user=20
    )
    assert set(devices_of(client)) == {"device0", "device1"}
    jobs = [generate(client, f"job {i}")["request_id"] for i in range(8)]
    results = [wait_done(client, request_id) for request_id in jobs]
    failed = [body for body in results if body["status"] == "failed"]
    # The broken device failed two jobs (the second took it out) and rendered no more.
    assert broken.calls == 2 and len(failed) == 2
    assert all(body["error"]["code"] == "PROVIDER_ERROR" for body in failed)
    assert good.calls == 6

    devices = devices_of(client)
    out, working = devices["device0"], devices["device1"]
    assert out["state"] == "out_of_service" and "device lost" in out["reason"]
    assert out["consecutive_failures"] == 2 and out["failures"] == 2 and out["jobs_done"] == 0
    assert out["retry_in_seconds"] > 30
    assert working["state"] == "ready" and working["jobs_done"] == 6 and working["reason"] is None
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["device_in_service"] is True
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["worker_alive"] is True

    text = client.get("/metrics").text
    assert 'darkroom_device_jobs_total{device="device0",outcome="device_error"} 2.0' in text
    assert 'darkroom_device_jobs_total{device="device1",outcome="completed"} 6.0' in text
    assert 'darkroom_device_in_service{device="device0"} 0.0' in text
    assert 'darkroom_device_busy{device="device1"} 0.0' in text
    assert "darkroom_model_loaded 1.0" in text


def test_with_every_device_out_readiness_is_503_until_one_is_back(
    make_client: AppFactory,
) -> None:
    client = make_client(
        renderer=[Broken(Solid()), Broken(Solid())], device_failures=1, device_retry=3
    )
    first, second = generate(client, "one"), generate(client, "two")
    assert wait_done(client, first["request_id"])["status"] == "failed"
    assert wait_done(client, second["request_id"])["status"] == "failed"
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["device_in_service"] is False
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert {entry["state"] for entry in health.json()["devices"]} == {"out_of_service"}
    # Retried after the backoff: both load again and are back in service.
    wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=15)
    wait_for(lambda: {e["state"] for e in devices_of(client).values()} == {"ready"}, timeout=15)


def test_a_pending_job_waits_for_a_device_back_in_service(make_client: AppFactory) -> None:
    """One device, out after a failure: the next job waits, then renders once it is back."""

    class FailsOnce(Fake):
        def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
            if self.calls == 1:
                raise RuntimeError("ECC error")

    renderer = FailsOnce(Solid())
    client = make_client(renderer=[renderer], device_failures=1, device_retry=1)
    failed = wait_done(client, generate(client, "first")["request_id"])
    assert failed["error"]["code"] == "PROVIDER_ERROR"
    later = generate(client, "later")
    assert wait_done(client, later["request_id"])["status"] == "completed"
    (entry,) = devices_of(client).values()
    assert entry["state"] == "ready" and entry["last_reason"].endswith("ECC error")


def test_devices_flag_parsing_and_its_default(tmp_path: Path) -> None:
    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert parse_devices("none") == []
    with pytest.raises(ValueError, match="gpu0"):
        parse_devices("cpu,gpu0")
    assert device_labels(["cpu", "cpu", "cuda:0"]) == ["cpu#0", "cpu#1", "cuda:0"]
    dev = tmp_path / "dev"
    dev.mkdir()
    assert default_devices(None, {}, dev) == [None]  # no GPU: one device, as before
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    assert default_devices(None, {}, dev) == ["cuda:0", "cuda:1", "cuda:2"]
    assert default_devices(None, {"CUDA_VISIBLE_DEVICES": "2,0"}, dev) == ["cuda:0", "cuda:1"]
    assert default_devices(None, {"CUDA_VISIBLE_DEVICES": "1"}, dev) == [None]
    assert default_devices("cpu", {}, dev) == ["cpu"]


def test_cpu_threads_are_split_between_cpu_devices() -> None:
    each = device_settings(Settings(devices="cpu,cpu", cpu_threads=8))
    assert [(one.device, one.cpu_threads) for one in each] == [("cpu", 4), ("cpu", 4)]
    assert [one.cpu_threads for one in device_settings(Settings(devices="cpu", cpu_threads=8))] == [
        8
    ]
    assert device_settings(Settings(devices="none")) == []


def test_devices_none_is_an_api_only_node(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        model="tiny",
        devices="none",
        allowed_hosts="testserver",  # TestClient's Host
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and "device_in_service" not in ready.json()["checks"]
        health = client.get("/health").json()
        assert health["devices"] == [] and health["device"] == "none"
        assert health["model"] == "tiny" and health["worker_alive"] is False
        body = generate(client)
        time.sleep(0.3)
        assert client.get(body["poll_url"]).json()["status"] == "pending"  # no one renders
        assert "darkroom_model_loaded 0.0" in client.get("/metrics").text
