"""Numbers AUTOMATIC1111 clients send: non-finite values are a 422 naming the field before
anything is admitted or charged (on both APIs), AUTOMATIC1111's step range, and sizes
rounded down to a multiple of 8 as its latent shape has them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import SMALL, AppFactory, bearer
from server.cli import main

TXT = "/sdapi/v1/txt2img"
BODY = {"prompt": "a red fox", "seed": 42, "sampler_name": "Euler", **SMALL}
NAN, INF = float("nan"), float("inf")


@pytest.fixture
def client(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> TestClient:
    """An app whose calls act as a user with 10 credits."""
    app = make_client()
    assert (
        main(["users", "add", "carol", "--data-dir", str(tmp_path / "data"), "--credits", "10"])
        == 0
    )
    app.headers.update(bearer(capsys.readouterr().out.strip().splitlines()[-1]))
    return app


def post_raw(client: TestClient, path: str, body: dict) -> tuple[int, dict]:
    """POST with NaN/Infinity written as JSON tokens, as Python's json emits them."""
    response = client.post(
        path, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    return response.status_code, response.json()


def nothing_stored_or_charged(client: TestClient) -> None:
    assert client.get("/generations/history").json()["items"] == []
    credits = client.get("/account").json()["credits"]
    assert (credits["balance"], credits["held"]) == (10, 0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"s_tmax": INF}, ["s_tmax"]),
        ({"hr_scale": NAN}, ["hr_scale"]),
        ({"denoising_strength": INF}, ["denoising_strength"]),
        ({"refiner_switch_at": NAN}, ["refiner_switch_at"]),
        ({"cfg_scale": -INF}, ["cfg_scale"]),
        (
            {"override_settings": {"CLIP_stop_at_last_layers": NAN}},
            ["override_settings", "CLIP_stop_at_last_layers"],
        ),  # noqa: E501
        ({"comments": {"note": [1, INF]}}, ["comments", "note", "1"]),
    ],
)
def test_non_finite_numbers_are_a_422_naming_the_field(
    client: TestClient, change: dict, field: list[str]
) -> None:
    status, body = post_raw(client, TXT, {**BODY, **change})
    assert status == 422, body
    assert {"loc": ["body", *field], "msg": "Input should be a finite number",
            "type": "finite_number"} in body["detail"]  # fmt: skip
    nothing_stored_or_charged(client)


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"width": 0}, "width", "greater than or equal to 256"),
        ({"height": 7}, "height", "greater than or equal to 256"),
        ({"prompt": "a fox <lora:tiny-lora-0:nan>"}, "prompt", "weight must be a finite number"),
        ({"prompt": "a fox <lora:tiny-lora-0:inf>"}, "prompt", "weight must be a finite number"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
    ],
)
def test_bad_sizes_steps_and_lora_weights_are_named(
    client: TestClient, change: dict, field: str, says: str
) -> None:
    status, body = post_raw(client, TXT, {**BODY, **change})
    assert status == 422, body
    messages = {d["loc"][1]: d["msg"] for d in body["detail"]}
    assert says in messages[field], body
    nothing_stored_or_charged(client)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"settings": {"cfg_scale": NAN}}, "settings.cfg_scale"),
        ({"settings": {"steps": INF}}, "settings.steps"),
        ({"loras": [{"id": 1, "weight": INF}]}, "loras.0.weight"),
    ],
)
def test_the_contract_route_refuses_non_finite_numbers(
    client: TestClient, change: dict, field: str
) -> None:
    status, body = post_raw(client, "/image/generate", {"prompt": "a fox", **change})
    assert status == 400, body
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert field in body["error"]["details"]["fields"], body
    nothing_stored_or_charged(client)


def test_the_contract_keeps_its_own_step_range(client: TestClient) -> None:
    body = {"prompt": "a fox", "settings": {"steps": 4}}
    status, body = post_raw(client, "/image/generate", body)
    assert status == 400 and "settings.steps" in body["error"]["details"]["fields"]
    assert "10" in body["error"]["details"]["fields"]["settings.steps"]
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    steps = json.dumps(schemas["GenerationSettings"]["properties"]["steps"])
    assert '"maximum": 150, "minimum": 10' in steps


def test_few_steps_and_sizes_off_the_grid_render(client: TestClient) -> None:
    response = client.post(TXT, json={**BODY, "steps": 4, "width": 263, "height": 257})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert (info["width"], info["height"], info["steps"]) == (256, 256, 4)
    assert "Steps: 4, " in info["infotexts"][0] and "Size: 256x256" in info["infotexts"][0]
    # Rendered and stored like any generation: the worker re-reads the 4-step request.
    [item] = client.get("/generations/history").json()["items"]
    assert item["status"] == "completed"
