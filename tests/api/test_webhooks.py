"""Webhooks end to end: a generation that ends (completed, failed, cancelled) is POSTed to
its options.webhook_url, signed as Standard Webhooks says (checked with the
`standardwebhooks` package), retried on 5xx/429 with the same webhook-id, also across a
restart; 410 stops it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook
from starlette.testclient import TestClient

from conftest import AppFactory, generate, wait_done
from fakes import Fake, RaisesOnce, Solid, Stalls
from server.cli import main
from webhook_receiver import Receiver


@pytest.fixture
def database_url(engine_per_test: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return engine_per_test


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()



def deliveries(client: TestClient, outcome: str, timeout: float = 10) -> float:
    """darkroom_webhook_deliveries_total{outcome=...} once it is read (the count is read
    from the database a moment behind, and a cluster node adds its `node` label)."""
    deadline, found = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        for family in text_string_to_metric_families(client.get("/metrics").text):
            for sample in family.samples:
                if (
                    sample.name == "darkroom_webhook_deliveries_total"
                    and sample.labels.get("outcome") == outcome
                ):
                    found = sample.value
        if found:
            return found
        time.sleep(0.1)
    return found

def start(make_client: AppFactory, renderer: Any = None, **overrides: Any) -> TestClient:
    return make_client(
        renderer or Fake(Solid()),
        webhook_allow_private=True,
        webhook_retry_scale=overrides.pop("webhook_retry_scale", 0.001),
        **overrides,
    )


def submit(client: TestClient, receiver: Receiver) -> str:
    return generate(client, options={"webhook_url": receiver.url})["request_id"]


def verified(client: TestClient, delivery: Any) -> dict:
    """The delivery's JSON, after standardwebhooks has checked its signature."""
    secret = client.get("/account").json()["webhook_secret"]
    assert secret.startswith("whsec_")
    return Webhook(secret).verify(delivery.body, delivery.headers)


def webhook_state(
    client: TestClient, request_id: str, want: str, attempts: int = 1, timeout: float = 30
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/generations/{request_id}").json()
        if body["webhook"]["state"] == want and body["webhook"]["attempts"] >= attempts:
            return body
        time.sleep(0.05)
    raise AssertionError(f"webhook never {want}: {body}")


def test_completed_generation_is_posted_signed(
    make_client: AppFactory, receiver: Receiver, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    client = start(make_client)
    request_id = submit(client, receiver)
    [delivery] = receiver.wait_for(1)
    body = verified(client, delivery)
    status = wait_done(client, request_id)
    assert body["request_id"] == request_id and body["status"] == "completed"
    assert [i["vault_url"] for i in body["images"]] == [i["vault_url"] for i in status["images"]]
    assert body["images"][0]["url"].startswith("http://testserver/files/")
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-id"].startswith("msg_")
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60
    detail = webhook_state(client, request_id, "delivered")
    assert detail["webhook"] == {
        "url": receiver.url, "state": "delivered", "attempts": 1, "last_status": 200,
        "next_attempt_at": None, "last_error": None,
    }
    assert {k: v for k, v in detail.items() if k != "webhook"}["request_id"] == request_id
    assert deliveries(client, "delivered") == 1
    # The operator's command shows the same secret the account does.
    secret = client.get("/account").json()["webhook_secret"]
    assert main(["users", "webhook-secret", "local", "--data-dir", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.strip() == secret


def test_generation_without_webhook_has_none(make_client: AppFactory) -> None:
    client = start(make_client)
    request_id = generate(client)["request_id"]
    wait_done(client, request_id)
    assert client.get(f"/generations/{request_id}").json()["webhook"] is None


def test_failed_generation_is_posted(make_client: AppFactory, receiver: Receiver) -> None:
    client = start(make_client, RaisesOnce(Solid()))
    request_id = submit(client, receiver)
    body = verified(client, receiver.wait_for(1)[0])
    assert body["request_id"] == request_id and body["status"] == "failed"
    assert body["error"]["code"] == "PROVIDER_ERROR"


def test_cancelled_generation_is_posted(make_client: AppFactory, receiver: Receiver) -> None:
    stalls = Stalls(Solid())
    client = start(make_client, stalls)
    request_id = submit(client, receiver)
    assert stalls.started.wait(30)
    waiting = client.get(f"/generations/{request_id}").json()["webhook"]
    assert waiting["state"] == "waiting" and waiting["attempts"] == 0
    assert receiver.received == []
    client.post(f"/generations/{request_id}/cancel")
    body = verified(client, receiver.wait_for(1)[0])
    assert body["status"] == "failed" and body["error"]["code"] == "CANCELLED"
    webhook_state(client, request_id, "delivered")
    time.sleep(0.5)
    assert len(receiver.received) == 1  # the worker's own stop writes no second one


def test_retries_until_success_with_the_same_id(
    make_client: AppFactory, receiver: Receiver
) -> None:
    receiver.answer(500, 503)
    client = start(make_client)
    request_id = submit(client, receiver)
    deliveries = receiver.wait_for(3)
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    bodies = [verified(client, d) for d in deliveries]
    assert {b["request_id"] for b in bodies} == {request_id}
    detail = webhook_state(client, request_id, "delivered")["webhook"]
    assert detail["attempts"] == 3 and detail["last_status"] == 200


def test_retry_after_is_honoured(make_client: AppFactory, receiver: Receiver) -> None:
    receiver.answer((429, {"Retry-After": "2"}))
    client = start(make_client)
    request_id = submit(client, receiver)
    pending = webhook_state(client, request_id, "pending")["webhook"]
    assert pending["last_status"] == 429 and pending["next_attempt_at"]
    first, second = receiver.wait_for(2)
    # Without Retry-After the schedule (scaled) would have tried again after 5 ms.
    assert second.at - first.at >= 1.9
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    webhook_state(client, request_id, "delivered")


@pytest.mark.parametrize("status", [410, 400])
def test_gone_and_other_client_errors_stop(
    make_client: AppFactory, receiver: Receiver, status: int
) -> None:
    receiver.default = (status, {})
    client = start(make_client)
    request_id = submit(client, receiver)
    detail = webhook_state(client, request_id, "failed")["webhook"]
    assert detail["attempts"] == 1 and detail["last_status"] == status
    assert detail["last_error"] == f"HTTP {status}" and detail["next_attempt_at"] is None
    time.sleep(0.5)
    assert len(receiver.received) == 1
    assert deliveries(client, "failed") == 1


def test_gives_up_after_the_schedule(make_client: AppFactory, receiver: Receiver) -> None:
    receiver.default = (502, {})
    # 24 h scaled to about 1.7 s.
    client = start(make_client, webhook_retry_scale=0.00002)
    request_id = submit(client, receiver)
    detail = webhook_state(client, request_id, "gave_up")["webhook"]
    assert detail["attempts"] == 10 == len(receiver.received)
    assert len({d.headers["webhook-id"] for d in receiver.received}) == 1


def test_retries_continue_after_a_restart(
    make_client: AppFactory, receiver: Receiver, tmp_path: Any
) -> None:
    receiver.default = (500, {})
    # Scaled schedule: now, 0.1 s, 6 s: the third attempt falls after the restart, with room
    # for a slow machine (at 0.01, a loaded run once caught the third attempt in flight).
    client = start(make_client, webhook_retry_scale=0.02)
    request_id = submit(client, receiver)
    before = receiver.wait_for(2)
    client.close()
    pending = len(receiver.received)
    receiver.default = (200, {})
    client = start(make_client, webhook_retry_scale=0.02)
    detail = webhook_state(client, request_id, "delivered")["webhook"]
    assert detail["attempts"] == pending + 1
    after = receiver.received[-1]
    assert after.headers["webhook-id"] == before[0].headers["webhook-id"]
    assert json.loads(after.body)["request_id"] == request_id
    assert verified(client, after)["status"] == "completed"
