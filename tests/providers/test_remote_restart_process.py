"""Real Darkroom processes watching a fal job, on SQLite and on PostgreSQL: SIGKILLed and
started again, a node resumes watching the job by its stored request id (no second
submit), completes it and charges it once; on PostgreSQL a node that dies for good has its
remote job taken over by another node once its lease expires."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fal_double import KEY, FalDouble

from pgtest import engine_url
from processes import ServerProcess
from server.cli import main

BODY = {
    "prompt": "a lighthouse",
    "settings": {"width": 256, "height": 256, "steps": 10, "seed": 5},
    "options": {"provider": "fal", "format": "png"},
}
COST = 256 * 256 / 1024**2 * 10 / 30


def wait_status(base: str, request_id: str, headers: dict, wanted: set[str]) -> dict:
    deadline = time.monotonic() + 90
    while True:
        body = httpx.get(f"{base}/generations/{request_id}/status", headers=headers).json()
        if body["status"] in wanted:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


@pytest.fixture
def fal(monkeypatch: pytest.MonkeyPatch) -> Iterator[FalDouble]:
    """The fal double, held IN_PROGRESS until released; the servers started use it."""
    with FalDouble() as double:
        monkeypatch.setenv("FAL_KEY", KEY)
        monkeypatch.setenv("DARKROOM_FAL_URL", double.url)
        monkeypatch.setenv("DARKROOM_REMOTE_POLL", "0.05")
        double.release.clear()
        yield double


def alice(data: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["users", "add", "alice", "--credits", "10", "--data-dir", str(data)]) == 0
    return {"Authorization": f"Bearer {capsys.readouterr().out.strip().splitlines()[-1]}"}


def charged_once(base: str, headers: dict[str, str]) -> None:
    account = httpx.get(f"{base}/account", headers=headers).json()["credits"]
    assert account["balance"] == pytest.approx(10 - COST, abs=1e-4)
    assert account["held"] == 0


def test_a_killed_server_resumes_its_remote_job_and_charges_once(
    each_engine: str | None, fal: FalDouble, models_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data = tmp_path / "data"
    headers = alice(data, capsys)
    log = tmp_path / "server.log"
    # the same node, started again; API-only (no local device: it only watches fal)
    node = ("--node-id", "node-1", "--devices", "none")
    with ServerProcess(data, models_dir, log, *node) as first:
        submitted = httpx.post(f"{first.base}/image/generate", json=BODY, headers=headers)
        request_id = submitted.json()["request_id"]
        wait_status(first.base, request_id, headers, {"processing"})
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert len(fal.submits) == 1
    with ServerProcess(data, models_dir, log, *node) as second:
        time.sleep(0.3)  # it is watching again, not submitting again
        assert len(fal.submits) == 1
        fal.release.set()
        done = wait_status(second.base, request_id, headers, {"completed", "failed"})
        assert done["status"] == "completed", done
        assert done["images"][0]["metadata"]["provider"] == "fal"
        assert httpx.get(done["images"][0]["vault_url"]).status_code == 200
        charged_once(second.base, headers)
    assert len(fal.submits) == 1 and fal.cancels == []


def test_a_dead_node_s_remote_job_is_taken_over_after_its_lease(
    fal: FalDouble, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with engine_url("postgresql", monkeypatch):
        two_nodes_one_dies(fal, models_dir, tmp_path, capsys)


def two_nodes_one_dies(
    fal: FalDouble, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    headers = alice(data, capsys)

    def node(name: str) -> ServerProcess:
        flags = ("--node-id", name, "--lease-seconds", "3", "--devices", "none")
        return ServerProcess(data, models_dir, tmp_path / f"{name}.log", *flags)

    with node("a") as a, node("b") as b:
        request_id = httpx.post(f"{a.base}/image/generate", json=BODY, headers=headers).json()[
            "request_id"
        ]
        wait_status(b.base, request_id, headers, {"processing"})  # a watches it
        a.process.kill()
        a.process.wait(30)
        killed = time.monotonic()
        fal.release.set()
        done = wait_status(b.base, request_id, headers, {"completed", "failed"})
        assert done["status"] == "completed", done
        assert time.monotonic() - killed >= 2  # b waited for a's lease to expire
        assert done["images"][0]["metadata"]["provider"] == "fal"
        assert httpx.get(done["images"][0]["vault_url"]).status_code == 200
        charged_once(b.base, headers)
        assert "watching 1 remote job(s) no node watched" in (tmp_path / "b.log").read_text()
    assert len(fal.submits) == 1 and fal.cancels == []
