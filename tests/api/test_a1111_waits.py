"""AUTOMATIC1111's txt2img is a blocking call and A1111 queues them: beyond its user's
active limit a call waits for a slot (up to --a1111-wait) instead of a 429, while the
server's --max-queued bound still answers 503 at once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from starlette.testclient import TestClient

from conftest import SMALL, AppFactory
from fakes import Hangs, Solid

TXT = "/sdapi/v1/txt2img"


def call(client: TestClient, seed: int) -> tuple[int, dict]:
    response = client.post(TXT, json={"prompt": f"call {seed}", "seed": seed, **SMALL})
    return response.status_code, response.json()


def history(client: TestClient) -> list[dict]:
    return client.get("/generations/history", params={"per_page": 50}).json()["items"]


def wait_for(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_sixth_call_waits_for_a_slot_then_completes(make_client: AppFactory) -> None:
    gate = Hangs(Solid())  # the first render waits for the gate
    client = make_client(renderer=gate, max_active_per_user=5, max_batch=1)
    with ThreadPoolExecutor(6) as pool:
        first_five = [pool.submit(call, client, seed) for seed in range(5)]
        assert gate.started.wait(30)
        wait_for(lambda: len(history(client)) == 5)
        sixth = pool.submit(call, client, 5)
        time.sleep(1.5)  # well past several admission retries
        assert not sixth.done(), sixth.result()
        assert len(history(client)) == 5  # waiting, not admitted, not refused
        gate.release.set()
        results = [future.result(timeout=120) for future in [*first_five, sixth]]
    assert [status for status, _ in results] == [200] * 6, results
    assert len(history(client)) == 6
    assert all(item["status"] == "completed" for item in history(client))


def test_the_wait_is_bounded_and_the_queue_bound_still_applies(make_client: AppFactory) -> None:
    gate = Hangs(Solid())
    client = make_client(renderer=gate, max_active_per_user=1, a1111_wait=0.5, max_queued=5)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, client, 0)
        assert gate.started.wait(30)
        started = time.monotonic()
        status, body = call(client, 1)
        assert status == 429 and body["error"] == "LIMIT_EXCEEDED", body
        assert time.monotonic() - started >= 0.5
        assert set(body) == {"error", "detail", "body", "errors"}
        gate.release.set()
        assert first.result(timeout=60)[0] == 200
    assert len(history(client)) == 1


def test_a_full_queue_is_a_503_without_waiting(make_client: AppFactory) -> None:
    gate = Hangs(Solid())
    client = make_client(renderer=gate, max_active_per_user=10, max_queued=1, max_batch=1)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(call, client, 0)
        assert gate.started.wait(30)
        queued = pool.submit(call, client, 1)
        wait_for(lambda: len(history(client)) == 2)
        started = time.monotonic()
        status, body = call(client, 2)
        assert status == 503 and body["error"] == "SERVICE_UNAVAILABLE", body
        assert time.monotonic() - started < 30  # answered, not held for --a1111-wait
        gate.release.set()
        assert [f.result(timeout=60)[0] for f in (running, queued)] == [200, 200]
