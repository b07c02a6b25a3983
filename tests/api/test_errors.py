"""Every bad request gets the contract's error object with the right code, never a 500."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from conftest import AppFactory, Preloaded, wait_done
from fakes import RaisesOnce


@pytest.fixture
def database_url(engine_per_test: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return engine_per_test


def post(client: TestClient, body: object, raw: bytes | None = None) -> tuple[int, dict]:
    if raw is not None:
        response = client.post("/image/generate", content=raw)
    else:
        response = client.post("/image/generate", json=body)
    error = response.json()
    assert error["status"] == "failed"
    assert set(error["error"]) == {"code", "message", "details"}
    return response.status_code, error["error"]


def history_total(client: TestClient) -> int:
    return client.get("/generations/history").json()["itemsTotal"]


BAD_FIELDS = [
    ({"settings": {"steps": 9}}, "settings.steps"),
    ({"settings": {"steps": 151}}, "settings.steps"),
    ({"settings": {"steps": "30"}}, "settings.steps"),
    ({"settings": {"steps": 30.5}}, "settings.steps"),
    ({"settings": {"cfg_scale": 0.9}}, "settings.cfg_scale"),
    ({"settings": {"cfg_scale": 30.1}}, "settings.cfg_scale"),
    ({"settings": {"seed": -2}}, "settings.seed"),
    ({"settings": {"seed": 2**32}}, "settings.seed"),
    ({"settings": {"width": 248}}, "settings.width"),
    ({"settings": {"width": 2056}}, "settings.width"),
    ({"settings": {"height": 260}}, "settings.height"),
    ({"settings": {"sampler": "warp_drive"}}, "settings.sampler"),
    ({"settings": {"negative_prompt": 5}}, "settings.negative_prompt"),
    ({"settings": "fast"}, "settings"),
    ({"loras": [{"id": 1, "weight": 2.5}]}, "loras.0.weight"),
    ({"loras": [{"id": 1, "weight": -0.1}]}, "loras.0.weight"),
    ({"loras": [{"weight": 1}]}, "loras.0.id"),
    ({"loras": [{"id": 1}, {"id": 1}]}, "loras"),
    ({"loras": {"id": 1}}, "loras"),
    ({"options": {"num_images": 0}}, "options.num_images"),
    ({"options": {"format": "gif"}}, "options.format"),
    ({"options": {"quality": 101}}, "options.quality"),
    ({"options": {"quality": -1}}, "options.quality"),
    ({"options": {"save_to_vault": "yes"}}, "options.save_to_vault"),
    ({"options": {"provider": "midjourney"}}, "options.provider"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 12}, "prompt"),
    ({"prompt": None}, "prompt"),
]


@pytest.mark.parametrize(("change", "field"), BAD_FIELDS)
def test_invalid_field_is_validation_error_naming_it(
    client: TestClient, change: dict, field: str
) -> None:
    body = {"prompt": "a fox", **change}
    status, error = post(client, body)
    assert status == 400
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"]["fields"], error
    assert field in error["message"]


def test_several_bad_fields_are_all_named(client: TestClient) -> None:
    _, error = post(client, {"prompt": "x", "settings": {"steps": 1, "cfg_scale": 99}})
    assert set(error["details"]["fields"]) == {"settings.steps", "settings.cfg_scale"}


def test_unknown_sampler_lists_the_valid_ones(client: TestClient) -> None:
    _, error = post(client, {"prompt": "x", "settings": {"sampler": "nope"}})
    assert "euler_a" in error["details"]["fields"]["settings.sampler"]
    assert "dpmpp_2m_karras" in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe", b'"text"', b"null"])
def test_malformed_body_is_validation_error(client: TestClient, raw: bytes) -> None:
    status, error = post(client, None, raw=raw)
    assert status == 400 and error["code"] == "VALIDATION_ERROR"


def test_missing_prompt(client: TestClient) -> None:
    status, error = post(client, {"settings": {}})
    assert status == 400 and "prompt" in error["details"]["fields"]


def test_limits_are_limit_exceeded(client: TestClient) -> None:
    status, error = post(client, {"prompt": "x", "options": {"num_images": 9}})
    assert (status, error["code"]) == (400, "LIMIT_EXCEEDED")
    assert error["details"]["limit"] == 8
    many = [{"id": i} for i in range(1, 7)]
    status, error = post(client, {"prompt": "x", "loras": many})
    assert (status, error["code"]) == (400, "LIMIT_EXCEEDED")
    assert error["details"] == {"field": "loras", "requested": 6, "limit": 5}


def test_max_loras_is_configurable(make_client: AppFactory) -> None:
    client = make_client(max_loras=1)
    _, error = post(client, {"prompt": "x", "loras": [{"id": 1}, {"id": 2}]})
    assert error["code"] == "LIMIT_EXCEEDED" and error["details"]["limit"] == 1


def test_unknown_lora_is_invalid_lora(client: TestClient) -> None:
    status, error = post(client, {"prompt": "x", "loras": [{"id": 1}, {"id": 999}]})
    assert (status, error["code"]) == (400, "INVALID_LORA")
    assert error["message"] == "LoRA model with ID 999 not found"
    assert error["details"] == {"invalid_ids": [999], "valid_ids": [1, 2]}


@pytest.mark.parametrize("provider", ["fal", "rundiffusion"])
def test_external_providers_are_not_configured(client: TestClient, provider: str) -> None:
    status, error = post(client, {"prompt": "x", "options": {"provider": provider}})
    assert (status, error["code"]) == (400, "PROVIDER_ERROR")
    assert provider in error["message"]


def test_rejected_requests_record_nothing(client: TestClient) -> None:
    post(client, {"prompt": "x", "options": {"num_images": 9}})
    post(client, {"prompt": "x", "loras": [{"id": 999}]})
    post(client, {"prompt": "x", "settings": {"steps": 1}})
    assert history_total(client) == 0


def test_unknown_route_and_method_use_the_error_format(client: TestClient) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404 and response.json()["error"]["code"] == "NOT_FOUND"
    response = client.get("/image/generate")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_pipeline_exception_fails_that_job_only(
    make_client: AppFactory, tiny_renderer: Preloaded
) -> None:
    client = make_client(renderer=RaisesOnce(tiny_renderer))
    first = client.post(
        "/image/generate",
        json={"prompt": "x", "settings": {"width": 256, "height": 256, "steps": 10}},
    ).json()
    second = client.post(
        "/image/generate",
        json={"prompt": "y", "settings": {"width": 256, "height": 256, "steps": 10}},
    ).json()
    failed = wait_done(client, first["request_id"])
    assert failed["status"] == "failed" and failed["credits_used"] == 0
    assert failed["error"]["code"] == "PROVIDER_ERROR"
    assert failed["error"]["details"]["reason"] == "RuntimeError: CUDA kernel exploded"
    assert "Traceback" not in str(failed)
    assert wait_done(client, second["request_id"])["status"] == "completed"


def test_whole_valued_numbers_count_as_integers(client: TestClient) -> None:
    # JSON has one number type (JavaScript sends 512.0 for 512), and JSON Schema agrees.
    body = {"prompt": "a fox", "settings": {"steps": 10.0, "width": 256.0, "height": 256}}
    response = client.post("/image/generate", json=body)
    assert response.status_code == 202, response.text
    item = client.get("/generations/history").json()["items"][0]
    assert item["settings"]["steps"] == 10 and isinstance(item["settings"]["steps"], int)


@pytest.mark.parametrize("lora_id", ["99999999999999999999", "9223372036854775808"])
def test_ids_beyond_the_database_range_are_unknown_ids(client: TestClient, lora_id: str) -> None:
    for path in (f"/loras/{lora_id}/thumbnail", f"/api:_WUcacrv/loras/{lora_id}/thumbnail"):
        response = client.get(path)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "NOT_FOUND"
    body = {"prompt": "a fox", "loras": [{"id": int(lora_id), "weight": 1}]}
    response = client.post("/image/generate", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_LORA"
    response = client.post("/presets/save", json={"name": "big", **body})
    assert response.json()["error"]["code"] == "INVALID_LORA"
