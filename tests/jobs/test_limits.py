"""Credits, holds and the contract's limits, through the HTTP API."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from conftest import SMALL, AppFactory, bearer, generate, render, wait_done
from fakes import Fake, Hangs, RaisesOnce, Solid, Stalls
from processes import ServerProcess
from server.cli import main
from server.contract import credits_for
from server.jobs.limits import PollLimits, RateLimiter
from server.store import Store

COST = credits_for(SMALL["width"], SMALL["height"], SMALL["steps"], 1)


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    """The credit and limit tests run on SQLite and on PostgreSQL."""
    return each_engine


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str, *flags: str) -> dict:
    assert main(["users", "add", name, "--data-dir", str(data_dir), *flags]) == 0
    return bearer(capsys.readouterr().out.strip().splitlines()[-1])


def credits(client: TestClient, headers: dict) -> dict:
    return client.get("/account", headers=headers).json()["credits"]


def refused(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["code"] == code
    return response.json()["error"]


def submit(client: TestClient, headers: dict | None = None, **body: object) -> httpx.Response:
    payload = {"prompt": "a fox", "settings": {**SMALL, "seed": 1}, **body}
    return client.post("/image/generate", json=payload, headers=headers)


def test_hold_becomes_the_charge_and_failure_or_cancel_releases_it(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renderer = RaisesOnce(Solid())
    client = make_client(renderer=renderer)
    alice = add_user(capsys, tmp_path / "data", "alice", "--credits", "1")

    failed = wait_done(client, generate(client, headers=alice)["request_id"], headers=alice)
    assert failed["error"]["code"] == "PROVIDER_ERROR" and failed["credits_used"] == 0
    assert credits(client, alice) == {"unlimited": False, "balance": 1, "held": 0, "available": 1}

    done = render(client, headers=alice)
    assert done["credits_used"] == COST
    assert credits(client, alice)["balance"] == pytest.approx(1 - COST)
    assert credits(client, alice)["held"] == 0


def test_running_job_holds_credits_until_cancelled(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stalls = Stalls(Solid())
    client = make_client(renderer=stalls)
    alice = add_user(capsys, tmp_path / "data", "alice", "--credits", str(COST * 2))
    running, waiting = generate(client, headers=alice), generate(client, headers=alice)
    assert stalls.started.wait(10)
    assert credits(client, alice)["held"] == pytest.approx(2 * COST)
    error = refused(submit(client, alice), 402, "QUOTA_EXCEEDED")
    assert error["details"]["cost"] == COST
    assert error["details"]["held"] == pytest.approx(2 * COST)
    for body in (waiting, running):
        client.post(f"/generations/{body['request_id']}/cancel", headers=alice)
    assert credits(client, alice)["held"] == 0
    assert credits(client, alice)["balance"] == pytest.approx(2 * COST)


def test_ledger_is_append_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database_url: str | None
) -> None:
    add_user(capsys, tmp_path, "alice", "--credits", "5")
    store = Store(database_url or tmp_path / "darkroom.sqlite3")
    try:
        for statement in ("UPDATE ledger SET amount = 500", "DELETE FROM ledger"):
            refused = pytest.raises(store.engine.errors, match="append-only")
            with refused, store.transaction() as db:
                db.execute(statement)
    finally:
        store.close()


def test_concurrent_submits_accept_exactly_what_the_balance_covers(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    alice = add_user(capsys, data, "alice", "--credits", str(3 * COST))
    flags = ("--max-active-per-user", "50")
    with ServerProcess(data, models_dir, tmp_path / "server.log", *flags) as server:
        body = {"prompt": "a fox", "settings": {**SMALL, "seed": 1}}

        def post(_: int) -> int:
            url = f"{server.base}/image/generate"
            return httpx.post(url, json=body, headers=alice, timeout=30).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = sorted(pool.map(post, range(12)))
        assert codes == [202] * 3 + [402] * 9
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            account = httpx.get(f"{server.base}/account", headers=alice).json()
            if account["active_generations"] == 0:
                break
            time.sleep(0.2)
        assert account["credits"]["held"] == 0
        assert account["credits"]["balance"] == pytest.approx(0, abs=1e-6)
        server.stop()


def test_five_active_generations_per_user(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Stalls(Solid()))
    alice = add_user(capsys, tmp_path / "data", "alice")
    bob = add_user(capsys, tmp_path / "data", "bob")
    accepted = [submit(client, alice) for _ in range(5)]
    assert all(response.status_code == 202 for response in accepted)
    sixth = submit(client, alice)
    error = refused(sixth, 429, "LIMIT_EXCEEDED")
    assert error["details"] == {"field": "concurrent_generations", "active": 5, "limit": 5}
    assert int(sixth.headers["Retry-After"]) >= 1
    assert submit(client, bob).status_code == 202  # a limit per user, not per server
    last = accepted[-1].json()["request_id"]
    client.post(f"/generations/{last}/cancel", headers=alice)
    assert submit(client, alice).status_code == 202


def test_poll_limit_refuses_fast_pollers_but_never_a_steady_one(make_client: AppFactory) -> None:
    # Ten times the contract's rate, to keep the test short; the buckets scale with it.
    client = make_client(renderer=Stalls(Solid()), poll_rate=10.0)
    request_id = generate(client)["request_id"]
    url = f"/generations/{request_id}/status"
    started = time.monotonic()
    for tick in range(15):
        time.sleep(max(0.0, started + tick * 0.1 - time.monotonic()))
        assert client.get(url).status_code == 200
    statuses = [client.get(url) for _ in range(10)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, "ten polls at once passed"
    refused(limited[0], 429, "LIMIT_EXCEEDED")
    assert int(limited[0].headers["Retry-After"]) >= 1


def test_polls_refused_for_one_generation_leave_the_users_other_polls_alone() -> None:
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    polls = PollLimits(RateLimiter(1.0, 3.0, clock), RateLimiter(5.0, 15.0, clock))
    hammered = [polls.wait(7, "a") for _ in range(30)]
    assert hammered[:3] == [0.0] * 3 and all(wait > 0 for wait in hammered[3:])
    assert [polls.wait(7, request) for request in "bcdef"] == [0.0] * 5
    # The user's own limit refuses: the generation's token is given back, not lost.
    for request in "ghijklmnopqrstuvwxyz":
        polls.wait(7, request)
    assert all(polls.wait(7, "z2") > 0 for _ in range(4))
    now[0] += 0.2  # one user token back (5/s); generation z2 still has its own
    assert polls.wait(7, "z2") == 0.0


def test_example_client_polling_pattern_is_never_refused() -> None:
    """Poll right after submit, then every second (with jitter), at the contract's 1/s."""
    now = [0.0]
    limiter = RateLimiter(1.0, 3.0, clock=lambda: now[0])
    moments = [0.0, 0.05] + [0.05 + i + (0.3 if i % 2 else -0.3) for i in range(1, 60)]
    for moment in moments:
        now[0] = moment
        assert limiter.acquire("generation") == 0.0, moment
    now[0] += 0.01
    assert [limiter.acquire("generation") > 0 for _ in range(3)][-1]


def test_full_queue_is_503_and_records_nothing(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stalls = Stalls(Solid())
    client = make_client(renderer=stalls, max_queued=2)
    alice = add_user(capsys, tmp_path / "data", "alice", "--credits", "1")
    generate(client, headers=alice)
    assert stalls.started.wait(10)  # running: no longer queued
    for _ in range(2):
        generate(client, headers=alice)
    before = client.get("/generations/history", headers=alice).json()["itemsTotal"]
    held = credits(client, alice)["held"]
    response = submit(client, alice)
    error = refused(response, 503, "SERVICE_UNAVAILABLE")
    assert error["details"] == {"reason": "queue_full", "limit": 2}
    assert int(response.headers["Retry-After"]) >= 1
    assert client.get("/generations/history", headers=alice).json()["itemsTotal"] == before
    assert credits(client, alice)["held"] == held


def test_body_size_and_prompt_length_limits(make_client: AppFactory) -> None:
    client = make_client(renderer=Fake(Solid()), max_body_bytes=2048, max_prompt_chars=100)
    big = submit(client, prompt="x" * 4000)
    error = refused(big, 413, "LIMIT_EXCEEDED")
    assert error["details"] == {"field": "body", "limit_bytes": 2048}
    chunked = client.post(
        "/image/generate", content=iter([b'{"prompt": "', b"x" * 4000, b'"}'])
    )
    refused(chunked, 413, "LIMIT_EXCEEDED")
    long_prompt = refused(submit(client, prompt="y" * 101), 400, "VALIDATION_ERROR")
    assert long_prompt["details"]["fields"] == {"prompt": "at most 100 characters, got 101"}
    negative = submit(client, settings={**SMALL, "negative_prompt": "n" * 101})
    assert "settings.negative_prompt" in refused(negative, 400, "VALIDATION_ERROR")["details"][
        "fields"
    ]
    assert submit(client, prompt="y" * 100).status_code == 202


def test_jobs_start_round_robin_across_users(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hangs = Hangs(Solid())
    client = make_client(renderer=hangs, max_active_per_user=10)
    alice = add_user(capsys, tmp_path / "data", "alice")
    bob = add_user(capsys, tmp_path / "data", "bob")
    generate(client, "a1", headers=alice)
    assert hangs.started.wait(10)
    for prompt in ("a2", "a3", "a4"):
        generate(client, prompt, headers=alice)
    last = [generate(client, prompt, headers=bob) for prompt in ("b1", "b2")][-1]
    assert last["queue_position"] == 3  # b1, a2, b2, a3, a4
    hangs.release.set()
    wait_done(client, last["request_id"], headers=bob)
    time.sleep(0.3)
    assert hangs.prompts == ["a1", "b1", "a2", "b2", "a3", "a4"]
