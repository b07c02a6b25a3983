"""Hostile or odd requests at the edge, on both APIs, each in the API's own error shape:
deeply nested JSON, webhook URLs with user-info, repeated slashes, junk HTTP methods (the
metrics stay bounded), /metrics behind --metrics-token, polls limited per user and id,
/sdapi 401s and 5xx in AUTOMATIC1111's shape, and no secret shown by /metrics or /health."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import AppFactory, bearer, generate
from fakes import Fake, Solid
from server.api import body
from server.api.a1111 import info
from server.cli import main

A1111_JSON_ROUTES = ["/sdapi/v1/txt2img", "/sdapi/v1/options", "/sdapi/v1/png-info"]
CONTRACT_JSON_ROUTES = ["/image/generate", "/presets/save"]


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str) -> str:
    assert main(["users", "add", name, "--data-dir", str(data_dir)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"webui:{token}".encode()).decode()}


@pytest.fixture
def fast(make_client: AppFactory) -> TestClient:
    return make_client(Fake(Solid()))


def nested(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


def test_deep_json_is_refused_on_every_json_route(fast: TestClient) -> None:
    deep = b'{"prompt": "a fox", "x": ' + nested(30_000) + b"}"  # 60 KB
    json_type = {"Content-Type": "application/json"}
    for route in CONTRACT_JSON_ROUTES + [f"/api:_WUcacrv{r}" for r in CONTRACT_JSON_ROUTES]:
        response = fast.post(route, content=deep, headers=json_type)
        assert response.status_code == 400, (route, response.text)
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and "deeper than 64" in error["message"]
    for route in A1111_JSON_ROUTES:
        response = fast.post(route, content=deep, headers=json_type)
        assert response.status_code == 422, (route, response.text)
        detail = response.json()["detail"][0]
        assert detail["type"] == "json_too_deep" and "deeper than 64" in detail["msg"]
    assert fast.get("/generations/history").json()["itemsTotal"] == 0


def test_depth_64_is_fine_and_brackets_in_strings_do_not_count(fast: TestClient) -> None:
    inside = b'{"prompt": "a fox", "settings": {"width": 256, "height": 256}, "x": '
    fits = inside + nested(63) + b"}"  # 64 levels with the body's object
    response = fast.post("/image/generate", content=fits)
    assert response.status_code == 202, response.text
    too_deep = inside + nested(64) + b"}"
    assert fast.post("/image/generate", content=too_deep).status_code == 400
    prompt = "[" * 500 + "{" * 500 + " a fox"
    generate(fast, prompt)
    assert body.too_deep(json.dumps({"p": "[" * 100}).encode()) is False
    assert body.too_deep(json.dumps({"p": '\\"' + "[" * 100}).encode()) is False


def test_webhook_url_with_user_info_is_a_validation_error(fast: TestClient) -> None:
    request = {"prompt": "a fox", "options": {"webhook_url": "https://bob:hunter2@hooks.example/"}}
    response = fast.post("/image/generate", json=request)
    assert response.status_code == 400
    message = response.json()["error"]["details"]["fields"]["options.webhook_url"]
    assert "user name or password" in message and "hunter2" not in message


def test_repeated_slashes_are_one(fast: TestClient) -> None:
    base = "http://testserver"  # a URL starting "//" would name a host
    assert fast.get(f"{base}//sdapi/v1/options").status_code == 200  # Open WebUI, "x/"
    assert fast.get(f"{base}/sdapi//v1///sd-models").status_code == 200
    assert fast.get(f"{base}//generations//history").json()["itemsTotal"] == 0
    assert fast.get(f"{base}//api:_WUcacrv//account").json()["user"] == "local"
    done = generate(fast)
    assert fast.get(f"{base}//generations/{done['request_id']}//status").status_code == 200


def test_junk_methods_share_one_metrics_label(fast: TestClient) -> None:
    for n in range(40):
        assert fast.request(f"JUNK{n}", "/health").status_code == 405
    fast.request("BREW", "/no/such/route")
    metrics = fast.get("/metrics").text
    assert "JUNK" not in metrics and "BREW" not in metrics
    assert 'method="other"' in metrics


def test_metrics_token(make_client: AppFactory) -> None:
    client = make_client(Fake(Solid()), metrics_token="scrape-s3cret")
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "UNAUTHORIZED"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", headers=bearer("nope"))
    assert wrong.status_code == 401 and "invalid_token" in wrong.headers["WWW-Authenticate"]
    assert "darkroom_queue_depth" in client.get("/metrics", headers=bearer("scrape-s3cret")).text
    # Prometheus' basic_auth works too (the token as password); the rest stays open.
    assert client.get("/metrics", headers=basic("scrape-s3cret")).status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/health").status_code == 200
    client.close()
    assert make_client(Fake(Solid())).get("/metrics").status_code == 200  # open by default


def test_another_user_polling_an_id_does_not_use_up_its_owners_polls(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_client(Fake(Solid()), poll_rate=1.0, poll_burst=3.0)
    alice = bearer(add_user(capsys, tmp_path / "data", "alice"))
    bob = bearer(add_user(capsys, tmp_path / "data", "bob"))
    request_id = generate(client, headers=alice)["request_id"]
    for _ in range(10):
        assert client.get(f"/generations/{request_id}/status", headers=bob).status_code in (
            404,
            429,
        )
        assert client.get(f"/generations/{request_id}", headers=bob).status_code in (404, 429)
    for _ in range(3):  # alice's own burst is intact
        response = client.get(f"/generations/{request_id}/status", headers=alice)
        assert response.status_code == 200, response.text
    assert client.get(f"/generations/{request_id}/status", headers=alice).status_code == 429


def test_a1111_401_asks_for_basic_in_a1111_shape(
    fast: TestClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = add_user(capsys, tmp_path / "data", "alice")
    for headers in ({}, basic("drk_1_wrong")):
        response = fast.get("/sdapi/v1/options", headers=headers)
        assert response.status_code == 401
        assert set(response.json()) == {"error", "detail", "body", "errors"}
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        if not headers:
            assert "HTTP Basic" in response.json()["detail"]
    assert fast.get("/sdapi/v1/options", headers=basic(token)).status_code == 200
    contract = fast.get("/account")
    assert contract.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "Bearer" in contract.json()["error"]["message"]


def test_a1111_5xx_in_a1111_shape(fast: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list:
        raise RuntimeError("a bug")

    monkeypatch.setattr(info, "a1111_samplers", broken)
    quiet = TestClient(fast.app, raise_server_exceptions=False)  # the running app
    response = quiet.get("/sdapi/v1/samplers")
    assert response.status_code == 500
    assert response.json() == {
        "error": "INTERNAL_ERROR", "detail": "Internal server error", "body": "", "errors": ""
    }  # fmt: skip
    assert "a bug" not in response.text
    assert quiet.get("/sdapi/v1/nothing-here").json()["error"] == "NOT_FOUND"


def test_metrics_and_health_show_no_secrets(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = {
        "fal_key": "fal-key-5ecret",
        "rundiffusion_auth": "webui:rd-5ecret",
        "metrics_token": "metrics-5ecret",
    }
    client = make_client(Fake(Solid()), **secrets)
    token = add_user(capsys, tmp_path / "data", "alice")
    generate(client, headers=bearer(token))
    client.get("/account", headers=bearer(token[:-4] + "xxxx"))  # a wrong one, logged 401
    client.get(f"/generations/{token}/status", headers=bearer(token))  # a token in a path
    shown = client.get("/metrics", headers=bearer(secrets["metrics_token"])).text
    shown += client.get("/health").text + client.get("/health/ready").text
    for secret in [*secrets.values(), "rd-5ecret", token, token.rpartition("_")[2]]:
        assert secret not in shown, secret
