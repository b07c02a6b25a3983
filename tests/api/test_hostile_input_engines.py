"""Input PostgreSQL cannot store or compare (NUL characters, ids past 64 bits, non-ASCII
digits) gets the same 4xx on both engines as on SQLite, before it reaches the database:
in prompts, preset names, AUTOMATIC1111 prompts, path ids and API tokens."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import AppFactory, generate
from fakes import Fake, Solid
from server.cli import main


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


@pytest.fixture
def fast(make_client: AppFactory) -> TestClient:
    return make_client(Fake(Solid()))


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str) -> str:
    assert main(["users", "add", name, "--data-dir", str(data_dir)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


NUL_BODIES = [
    ("/image/generate", {"prompt": "a fox\x00"}, "prompt"),
    ("/image/generate", {"prompt": "a fox", "settings": {"negative_prompt": "\x00"}},
     "settings.negative_prompt"),
    ("/image/generate", {"prompt": "a fox", "settings": {"model": "tiny\x00"}}, "settings.model"),
    ("/presets/save", {"name": "portrait\x00"}, "name"),
    ("/presets/save", {"name": "portrait", "tags": ["a", "b\x00"]}, "tags.1"),
]  # fmt: skip


@pytest.mark.parametrize(("route", "request_body", "field"), NUL_BODIES)
def test_nul_in_a_contract_body(
    fast: TestClient, route: str, request_body: dict, field: str
) -> None:
    response = fast.post(route, json=request_body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "NUL" in error["details"]["fields"][field]
    assert fast.get("/generations/history").json()["itemsTotal"] == 0
    assert fast.get("/presets").json() == []


def test_nul_in_a1111_bodies(fast: TestClient) -> None:
    for body, field in (
        ({"prompt": "a fox\x00", "steps": 10, "width": 256, "height": 256}, "prompt"),
        ({"prompt": "a fox <lora:x\x00:1>"}, "prompt"),
        ({"prompt": "a fox", "negative_prompt": "\x00"}, "negative_prompt"),
    ):
        response = fast.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", field] and "NUL" in detail["msg"]
    response = fast.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny\x00"})
    assert response.status_code == 422
    assert fast.get("/generations/history").json()["itemsTotal"] == 0


def test_nul_in_path_ids_is_not_found(fast: TestClient) -> None:
    done = generate(fast)
    for path in (
        "/vault/%00.jpg",  # no token needed
        "/vault/abc%00.png",
        "/files/%00.png?expires=1&sig=x",
        "/generations/%00/status",
        "/generations/%00",
        "/generations/%00/events",
        f"/generations/{done['request_id']}%00/status",
        "/api:_WUcacrv/generations/%00/status",
        "/docs/%00.js",
    ):
        response = fast.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "NOT_FOUND"
    assert fast.post("/generations/%00/cancel").status_code == 404
    assert fast.delete("/generations/%00").status_code == 404
    history = fast.get("/generations/history", params={"date_from": "2024\x00"})
    assert history.status_code == 400


@pytest.mark.parametrize(
    "token",
    ["drk_²_secret", "drk_١٢_secret", "drk_99999999999999999999999_secret",
     "drk_18446744073709551616_secret", "drk_-1_secret", "drk_1\x00_secret"],
)  # fmt: skip
def test_tokens_that_cannot_be_an_id_are_401(
    fast: TestClient, tmp_path: Path, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    add_user(capsys, tmp_path / "data", "alice")
    if token.isascii() or token.isprintable() and all(ord(c) < 256 for c in token):
        # A header is bytes; servers read them as Latin-1 ("²" is one byte).
        header = f"Bearer {token.replace(chr(0), '')}".encode("latin-1")
        response = fast.get("/account", headers={"Authorization": header})  # type: ignore[dict-item]
        assert response.status_code == 401, response.text
        assert response.json()["error"]["details"]["reason"] == "invalid_token"
    password = base64.b64encode(f"u:{token}".encode()).decode()
    a1111 = fast.get("/sdapi/v1/options", headers={"Authorization": f"Basic {password}"})
    assert a1111.status_code == 401, a1111.text


def test_a_bad_token_in_open_mode_is_still_open_mode(fast: TestClient) -> None:
    header = "Bearer drk_²_x".encode("latin-1")
    assert fast.get("/account", headers={"Authorization": header}).json()["user"] == "local"  # type: ignore[dict-item]
