"""The Idempotency-Key header on the routes that start a generation, on SQLite and on
PostgreSQL: a repeat is answered alike and admits nothing; keys are per user and survive
a restart."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from conftest import SMALL, AppFactory, bearer, wait_done
from fakes import Fake, Solid
from processes import ServerProcess
from server.cli import main
from server.contract import credits_for
from server.state import AppState

COST = credits_for(SMALL["width"], SMALL["height"], SMALL["steps"], 1)
BODY = {"prompt": "a fox", "settings": {**SMALL, "seed": 1}, "options": {"format": "png"}}
TXT = "/sdapi/v1/txt2img"
TXT_BODY = {"prompt": "a red fox", "seed": 42, "sampler_name": "Euler", **SMALL}


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str, *flags: str) -> dict:
    assert main(["users", "add", name, "--data-dir", str(data_dir), *flags]) == 0
    return bearer(capsys.readouterr().out.strip().splitlines()[-1])


def keyed(headers: dict, key: str) -> dict:
    return {**headers, "Idempotency-Key": key}


def history_ids(client: TestClient, headers: dict) -> list[str]:
    items = client.get("/generations/history", headers=headers).json()["items"]
    return [item["request_id"] for item in items]


def test_a_repeat_is_the_first_answer_with_one_job_and_one_charge(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renderer = Fake(Solid())
    client = make_client(renderer=renderer)
    alice = add_user(capsys, tmp_path / "data", "alice", "--credits", "1")
    first = client.post("/image/generate", json=BODY, headers=keyed(alice, "order-1"))
    assert first.status_code == 202, first.text
    # Another key order and spacing is the same request.
    again = client.post(
        "/image/generate",
        content=b'{"settings": {"seed": 1, "steps": 10, "height": 256, "width": 256},'
        b' "options": {"format": "png"}, "prompt": "a fox"}',
        headers={**keyed(alice, "order-1"), "Content-Type": "application/json"},
    )
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    request_id = first.json()["request_id"]
    assert wait_done(client, request_id, headers=alice)["status"] == "completed"
    # After it finished: still the first answer, and still nothing new admitted.
    late = client.post("/image/generate", json=BODY, headers=keyed(alice, "order-1"))
    assert late.status_code == 202 and late.json() == first.json()
    assert history_ids(client, alice) == [request_id]
    assert renderer.calls == 1
    account = client.get("/account", headers=alice).json()["credits"]
    assert account["balance"] == pytest.approx(1 - COST) and account["held"] == 0
    # Without a key, the same body is a new generation.
    other = client.post("/image/generate", json=BODY, headers=alice)
    assert other.status_code == 202 and other.json()["request_id"] != request_id


def test_the_same_key_with_another_body_is_a_422_naming_the_header(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Fake(Solid()))
    alice = add_user(capsys, tmp_path / "data", "alice")
    first = client.post("/image/generate", json=BODY, headers=keyed(alice, "k"))
    assert first.status_code == 202
    changed = {**BODY, "prompt": "a wolf"}
    response = client.post("/image/generate", json=changed, headers=keyed(alice, "k"))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "Idempotency-Key" in error["details"]["fields"]
    assert "different request" in error["message"]
    # The same key on AUTOMATIC1111's route is another request too, in its own error shape.
    a1111 = client.post(TXT, json=TXT_BODY, headers=keyed(alice, "k"))
    assert a1111.status_code == 422
    assert a1111.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert history_ids(client, alice) == [first.json()["request_id"]]


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_refused(client: TestClient, key: str) -> None:
    headers = {"Idempotency-Key": key.encode()}
    response = client.post("/image/generate", json=BODY, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert "255 printable ASCII" in response.json()["error"]["message"]
    a1111 = client.post(TXT, json=TXT_BODY, headers=headers)
    assert a1111.status_code == 422
    assert a1111.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # The draft's structured-field spelling (a quoted string) is the bare key.
    quoted = client.post("/image/generate", json=BODY, headers={"Idempotency-Key": '"q-1"'})
    bare = client.post("/image/generate", json=BODY, headers={"Idempotency-Key": "q-1"})
    assert bare.json()["request_id"] == quoted.json()["request_id"]


def test_a_duplicate_while_the_first_is_admitted_is_a_409(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Fake(Solid()))
    alice = add_user(capsys, tmp_path / "data", "alice")
    state: AppState = client.app.state.darkroom  # type: ignore[attr-defined]
    admitting, release = threading.Event(), threading.Event()
    submit = state.admission.submit

    def slow_submit(*args, **kwargs):  # type: ignore[no-untyped-def]
        admitting.set()
        assert release.wait(30)
        return submit(*args, **kwargs)

    state.admission.submit = slow_submit  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/image/generate", json=BODY, headers=keyed(alice, "c"))
        assert admitting.wait(30)
        duplicate = client.post("/image/generate", json=BODY, headers=keyed(alice, "c"))
        release.set()
        answered = first.result(60)
    assert duplicate.status_code == 409, duplicate.text
    assert duplicate.json()["error"]["code"] == "CONFLICT"
    assert duplicate.headers["Retry-After"] == "1"
    assert answered.status_code == 202
    state.admission.submit = submit  # type: ignore[method-assign]
    repeat = client.post("/image/generate", json=BODY, headers=keyed(alice, "c"))
    assert repeat.json()["request_id"] == answered.json()["request_id"]
    assert history_ids(client, alice) == [answered.json()["request_id"]]


def test_a_refused_request_does_not_use_up_its_key(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Fake(Solid()))
    data = tmp_path / "data"
    broke = add_user(capsys, data, "broke", "--credits", "0")
    refused = client.post("/image/generate", json=BODY, headers=keyed(broke, "pay"))
    assert refused.status_code == 402
    invalid = client.post("/image/generate", json={"prompt": 5}, headers=keyed(broke, "pay"))
    assert invalid.status_code == 400
    assert main(["credits", "add", "broke", "1", "--data-dir", str(data)]) == 0
    retried = client.post("/image/generate", json=BODY, headers=keyed(broke, "pay"))
    assert retried.status_code == 202, retried.text


def test_two_users_use_the_same_key_independently(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Fake(Solid()))
    alice = add_user(capsys, tmp_path / "data", "alice")
    bob = add_user(capsys, tmp_path / "data", "bob")
    mine = client.post("/image/generate", json=BODY, headers=keyed(alice, "shared"))
    theirs = client.post(
        "/image/generate", json={**BODY, "prompt": "a cat"}, headers=keyed(bob, "shared")
    )
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["request_id"] != theirs.json()["request_id"]
    assert history_ids(client, alice) == [mine.json()["request_id"]]
    assert history_ids(client, bob) == [theirs.json()["request_id"]]


def test_an_expired_key_starts_a_new_generation(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(renderer=Fake(Solid()))
    alice = add_user(capsys, tmp_path / "data", "alice")
    state: AppState = client.app.state.darkroom  # type: ignore[attr-defined]
    first = client.post("/image/generate", json=BODY, headers=keyed(alice, "old"))
    day_ago = time.time() - 24 * 3600 - 1
    with state.store.transaction() as db:
        db.execute("UPDATE idempotency_keys SET created_at = ?", (day_ago,))
    again = client.post("/image/generate", json=BODY, headers=keyed(alice, "old"))
    assert again.status_code == 202
    assert again.json()["request_id"] != first.json()["request_id"]
    assert "idempotent-replayed" not in again.headers


def test_txt2img_repeat_returns_the_same_images_without_a_second_render(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renderer = Fake(Solid())
    client = make_client(renderer=renderer)
    alice = add_user(capsys, tmp_path / "data", "alice", "--credits", "1")
    first = client.post(TXT, json=TXT_BODY, headers=keyed(alice, "a1"))
    assert first.status_code == 200, first.text
    again = client.post(TXT, json=TXT_BODY, headers=keyed(alice, "a1"))
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert renderer.calls == 1
    assert client.get("/account", headers=alice).json()["credits"]["balance"] == pytest.approx(
        1 - COST
    )


def test_txt2img_repeat_while_the_first_still_renders_is_a_409(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = threading.Event()

    class Gated(Fake):
        def misbehave(self, spec, on_step, should_stop) -> None:  # type: ignore[no-untyped-def]
            assert gate.wait(30)

    renderer = Gated(Solid())
    client = make_client(renderer=renderer)
    alice = add_user(capsys, tmp_path / "data", "alice")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, TXT, json=TXT_BODY, headers=keyed(alice, "b"))
        assert renderer.started.wait(30)
        duplicate = client.post(TXT, json=TXT_BODY, headers=keyed(alice, "b"))
        gate.set()
        answered = first.result(60)
    assert duplicate.status_code == 409, duplicate.text
    assert duplicate.json()["error"] == "CONFLICT"
    assert answered.status_code == 200 and renderer.calls == 1


def test_a_key_survives_a_server_crash_and_restart(
    tmp_path: Path,
    models_dir: Path,
    database_url: str | None,  # the server processes use it (DARKROOM_DATABASE_URL)
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    alice = add_user(capsys, data, "alice")
    log = tmp_path / "server.log"
    with ServerProcess(data, models_dir, log) as server:
        url = f"{server.base}/image/generate"
        first = httpx.post(url, json=BODY, headers=keyed(alice, "restart"), timeout=30)
        assert first.status_code == 202, first.text
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    with ServerProcess(data, models_dir, log) as server:
        url = f"{server.base}/image/generate"
        again = httpx.post(url, json=BODY, headers=keyed(alice, "restart"), timeout=30)
        assert again.status_code == 202
        assert again.json()["request_id"] == first.json()["request_id"]
        changed = httpx.post(
            url, json={**BODY, "prompt": "a wolf"}, headers=keyed(alice, "restart"), timeout=30
        )
        assert changed.status_code == 422
        items = httpx.get(f"{server.base}/generations/history", headers=alice).json()["items"]
        assert [item["request_id"] for item in items] == [first.json()["request_id"]]


def test_openapi_declares_the_header(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/image/generate"]["post"]
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key" and header["schema"]["maxLength"] == 255
    assert {"409", "422"} <= set(operation["responses"])
