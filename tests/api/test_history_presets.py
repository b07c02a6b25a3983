"""GET /generations/history and POST /presets/save."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from conftest import generate, render, wait_done

PAGING_KEYS = {
    "items",
    "itemsReceived",
    "curPage",
    "nextPage",
    "prevPage",
    "offset",
    "perPage",
    "itemsTotal",
    "pageTotal",
}


@pytest.fixture
def database_url(engine_per_test: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return engine_per_test


def test_history_pages_newest_first(client: TestClient) -> None:
    ids = [render(client, f"prompt {i}")["request_id"] for i in range(5)]
    page1 = client.get("/generations/history?per_page=2").json()
    assert set(page1) == PAGING_KEYS
    assert [i["request_id"] for i in page1["items"]] == ids[::-1][:2]
    assert (page1["curPage"], page1["nextPage"], page1["prevPage"]) == (1, 2, None)
    assert (page1["itemsTotal"], page1["pageTotal"], page1["itemsReceived"]) == (5, 3, 2)
    page3 = client.get("/generations/history?page=3&per_page=2").json()
    assert [i["request_id"] for i in page3["items"]] == ids[:1]
    assert (page3["nextPage"], page3["prevPage"], page3["offset"]) == (None, 2, 4)
    item = page1["items"][0]
    assert item["prompt"] == "prompt 4" and item["status"] == "completed"
    assert item["settings"]["steps"] == 10 and item["images"][0]["url"]
    assert item["created_at"].endswith("Z")


def test_history_filters(client: TestClient) -> None:
    fixed = render(client, settings={"seed": 3})
    drawn = render(client, settings={"seed": -1})
    seeded = client.get("/generations/history?has_seed=true").json()
    assert [i["request_id"] for i in seeded["items"]] == [fixed["request_id"]]
    unseeded = client.get("/generations/history?has_seed=false").json()
    assert [i["request_id"] for i in unseeded["items"]] == [drawn["request_id"]]
    assert unseeded["items"][0]["settings"]["seed"] == drawn["images"][0]["metadata"]["seed"]
    assert client.get("/generations/history?date_from=2000-01-01").json()["itemsTotal"] == 2
    assert client.get("/generations/history?date_from=2999-01-01").json()["itemsTotal"] == 0


def test_history_includes_pending_and_failed(client: TestClient) -> None:
    body = generate(client)
    items = client.get("/generations/history").json()["items"]
    assert items[0]["request_id"] == body["request_id"]
    wait_done(client, body["request_id"])


def test_history_bad_query_is_validation_error(client: TestClient) -> None:
    for query in ("page=0", "page=abc", "per_page=1000", "date_from=yesterday", "has_seed=maybe"):
        response = client.get(f"/generations/history?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_presets_create_then_update_by_name(client: TestClient) -> None:
    body = {
        "name": "portrait",
        "settings": {"steps": 40, "sampler": "Euler a"},
        "loras": [{"id": 1, "weight": 0.8}],
        "tags": ["people"],
    }
    created = client.post("/presets/save", json=body)
    assert created.status_code == 201
    preset = created.json()
    assert preset["settings"] == {"steps": 40, "sampler": "euler_a"}
    assert preset["loras"] == [{"id": 1, "weight": 0.8}] and preset["tags"] == ["people"]
    updated = client.post("/presets/save", json={**body, "settings": {"cfg_scale": 5}})
    assert updated.status_code == 200
    assert updated.json()["id"] == preset["id"]
    assert updated.json()["settings"] == {"cfg_scale": 5.0}
    assert [p["name"] for p in client.get("/presets").json()] == ["portrait"]


def test_presets_validate_like_generate(client: TestClient) -> None:
    cases = [
        ({"name": "x", "settings": {"steps": 5}}, "VALIDATION_ERROR"),
        ({"settings": {}}, "VALIDATION_ERROR"),
        ({"name": "x", "loras": [{"id": 999}]}, "INVALID_LORA"),
        ({"name": "x", "loras": [{"id": i} for i in range(1, 8)]}, "LIMIT_EXCEEDED"),
    ]
    for body, code in cases:
        response = client.post("/presets/save", json=body)
        assert response.status_code == 400 and response.json()["error"]["code"] == code, body
    assert client.get("/presets").json() == []
