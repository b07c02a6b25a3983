"""Two real `darkroom serve` processes on one PostgreSQL database and one vault: every job
rendered exactly once, a SIGKILLed node's job finished by the other after its lease, a
cluster restart that loses nothing, polls, event streams, cancels and limits across nodes."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from conftest import SMALL, bearer
from pgtest import engine_url
from processes import ServerProcess
from server.cli import main
from server.contract import credits_for
from server.store import Store

COST = credits_for(SMALL["width"], SMALL["height"], SMALL["steps"], 1)


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database, in DARKROOM_DATABASE_URL for the nodes and `darkroom` commands."""
    with engine_url("postgresql", monkeypatch) as url:
        assert url is not None
        yield url


def node(tmp_path: Path, models_dir: Path, name: str, *flags: str) -> ServerProcess:
    log = tmp_path / f"{name}.log"
    return ServerProcess(tmp_path / "data", models_dir, log, "--node-id", name, *flags)


def submit(base: str, steps: int = 10, headers: dict | None = None, prompt: str = "a fox"):
    body = {"prompt": prompt, "settings": {**SMALL, "steps": steps, "seed": 3}}
    return httpx.post(f"{base}/image/generate", json=body, headers=headers, timeout=30)


def status(base: str, request_id: str, headers: dict | None = None) -> dict:
    url = f"{base}/generations/{request_id}/status"
    return httpx.get(url, headers=headers, timeout=30).json()


def wait_for(base: str, request_id: str, wanted: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (body := status(base, request_id))["status"] not in wanted:
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    return body


def rows(url: str) -> dict[str, dict]:
    store = Store(url)
    try:
        found = store.fetch_all("SELECT * FROM generations")
        images = store.images_of([row["id"] for row in found])
    finally:
        store.close()
    return {row["request_id"]: {**row, "images": len(images[row["id"]])} for row in found}


def events_until_final(base: str, request_id: str) -> tuple[list[dict], float]:
    """The status events of a generation up to its final one, and when (wall clock) the
    final one arrived."""
    seen = []
    url = f"{base}/generations/{request_id}/events"
    with httpx.stream("GET", url, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["status"] in ("completed", "failed"):
                    break
    return seen, time.time()


def test_two_nodes_share_one_queue(database: str, tmp_path: Path, models_dir: Path) -> None:
    with ExitStack() as stack:
        a = stack.enter_context(node(tmp_path, models_dir, "a"))
        b = stack.enter_context(node(tmp_path, models_dir, "b"))
        ids = [submit(n.base, prompt=f"job {i}").json()["request_id"]
               for i, n in enumerate([a, b, a, b, a])]  # 5: the active limit
        # a job submitted on a: its event stream and polls on b follow it to the end
        events, arrived = events_until_final(b.base, ids[0])
        assert events[-1]["status"] == "completed"
        # ... within a second of the rendering node recording it (same machine, one clock)
        assert arrived - rows(database)[ids[0]]["finished_at"] < 1.0
        for request_id in ids:
            done = wait_for(b.base, request_id, ("completed", "failed"))
            assert done["status"] == "completed", done
            assert httpx.get(done["images"][0]["url"]).status_code == 200
        stored = rows(database)
        assert all(stored[i]["attempts"] == 1 and stored[i]["images"] == 1 for i in ids)
        assert {stored[i]["node_id"] for i in ids} <= {"a", "b"}
        health = httpx.get(f"{a.base}/health").json()
        assert health["node"] == "a"
        assert sorted(n["id"] for n in health["nodes"]) == ["a", "b"]
        assert all(n["seconds_since_heartbeat"] < 30 for n in health["nodes"])
        assert 'darkroom_node_info{node="b"} 1.0' in httpx.get(f"{b.base}/metrics").text

        # the 5-active limit holds across nodes: 12 at once, spread, 5 accepted
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: submit((a, b)[i % 2].base, 150), range(12)))
        accepted = [r.json()["request_id"] for r in answers if r.status_code == 202]
        assert sorted(r.status_code for r in answers) == [202] * 5 + [429] * 7
        # cancels reach the node rendering the job, wherever they arrive: each job is
        # cancelled through the node that is not rendering it
        deadline = time.monotonic() + 120
        while not (busy := [r for r in rows(database).values() if r["status"] == "processing"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        renderer = busy[0]["node_id"]
        started = time.monotonic()
        for request_id in accepted:
            other = b if rows(database)[request_id]["node_id"] == "a" else a
            httpx.post(f"{other.base}/generations/{request_id}/cancel")
        for request_id in accepted:
            body = wait_for(a.base, request_id, ("failed",), timeout=30)
            assert body["error"]["code"] == "CANCELLED"
        # the rendering node stopped its render, and is free again soon after
        quick = submit(b.base).json()["request_id"]
        assert wait_for(a.base, quick, ("completed",))["status"] == "completed"
        assert time.monotonic() - started < 30
        log = (tmp_path / f"{renderer}.log").read_text()
        assert "stopped (cancelled)" in log
        assert a.stop() == 0 and b.stop() == 0


def test_a_killed_node_s_job_finishes_elsewhere_and_a_restart_loses_nothing(
    database: str, tmp_path: Path, models_dir: Path
) -> None:
    lease = ("--lease-seconds", "3")
    a, b = node(tmp_path, models_dir, "a", *lease), node(tmp_path, models_dir, "b", *lease)
    with a, b:
        long = submit(a.base, 60).json()["request_id"]
        wait_for(b.base, long, ("processing",))
        victim = rows(database)[long]["node_id"]
        survivor = b if victim == "a" else a
        (a if victim == "a" else b).process.kill()
        killed = time.monotonic()
        done = wait_for(survivor.base, long, ("completed",), timeout=180)
        assert time.monotonic() - killed >= 2  # it waited for the lease to expire
        assert httpx.get(done["images"][0]["url"]).status_code == 200
        assert rows(database)[long]["attempts"] == 2
        assert rows(database)[long]["node_id"] == ("b" if victim == "a" else "a")

        queued = [submit(survivor.base, 30, prompt=f"q{i}").json()["request_id"]
                  for i in range(4)]
        survivor.stop(signal.SIGTERM)  # drains its running job, hands back its claims
        assert all(r["node_id"] is None for r in rows(database).values()
                   if r["status"] == "pending")
    # every node down; start both again: every accepted job completes, once
    a, b = node(tmp_path, models_dir, "a", *lease), node(tmp_path, models_dir, "b", *lease)
    with a, b:
        for i, request_id in enumerate([long, *queued]):
            body = wait_for((a, b)[i % 2].base, request_id, ("completed",), 180)
            assert httpx.get(body["images"][0]["url"]).status_code == 200
        stored = rows(database)
        assert all(stored[i]["images"] == 1 for i in [long, *queued])
        assert a.stop() == 0 and b.stop() == 0


def test_exact_credits_across_two_nodes(
    database: str, tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "add", "alice", "--credits", str(3 * COST)]) == 0
    alice = bearer(capsys.readouterr().out.strip().splitlines()[-1])
    flags = ("--max-active-per-user", "50")
    with node(tmp_path, models_dir, "a", *flags) as a, node(tmp_path, models_dir, "b", *flags) as b:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: submit((a, b)[i % 2].base, headers=alice),
                                    range(12)))
        assert sorted(r.status_code for r in answers) == [202] * 3 + [402] * 9
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            account = httpx.get(f"{b.base}/account", headers=alice).json()
            if account["active_generations"] == 0:
                break
            time.sleep(0.2)
        assert account["credits"]["held"] == 0
        assert account["credits"]["balance"] == pytest.approx(0, abs=1e-6)
        assert a.stop() == 0 and b.stop() == 0
