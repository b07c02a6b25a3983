"""What the console needs from the API, on SQLite and PostgreSQL: the gallery's filters,
deleting an ended generation (owner only, its charge kept), administrators and their
routes (queue, users, credits, tokens, activity), /samplers and the image's infotext."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import AppFactory, bearer, generate, render, wait_done
from fakes import Fake, Solid
from server.cli import main


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str, *flags: str) -> str:
    assert main(["users", "add", name, "--data-dir", str(data_dir), *flags]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture
def team(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[TestClient, dict[str, dict[str, str]]]:
    data = tmp_path / "data"
    client = make_client(renderer=Fake(Solid()))
    tokens = {
        "root": bearer(add_user(capsys, data, "root", "--admin")),
        "ada": bearer(add_user(capsys, data, "ada", "--credits", "10")),
        "bob": bearer(add_user(capsys, data, "bob")),
    }
    return client, tokens


def test_history_filters_by_text_status_lora_and_model(
    team: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, who = team
    lora = client.get("/loras/available", headers=who["ada"]).json()[0]["id"]
    render(client, "a lighthouse at 100% dusk", who["ada"], loras=[{"id": lora, "weight": 1}])
    render(client, "a harbour", who["ada"])
    render(client, "a lighthouse", who["bob"])  # another user's: never listed

    def prompts(query: str) -> list[str]:
        response = client.get(f"/generations/history?{query}", headers=who["ada"])
        assert response.status_code == 200, response.text
        return [item["prompt"] for item in response.json()["items"]]

    assert prompts("q=LIGHTHOUSE") == ["a lighthouse at 100% dusk"]
    assert prompts("q=100%25") == ["a lighthouse at 100% dusk"]  # % is text, not a wildcard
    assert prompts("q=_") == []
    assert prompts(f"lora={lora}") == ["a lighthouse at 100% dusk"]
    assert prompts("status=completed") == ["a harbour", "a lighthouse at 100% dusk"]
    assert prompts("status=failed") == []
    model = client.get("/models", headers=who["ada"]).json()[0]["name"]
    assert len(prompts(f"model={model}")) == 2 and prompts("model=other") == []
    assert prompts("date_to=2000-01-01") == []
    bad = client.get("/generations/history?status=lost", headers=who["ada"])
    assert bad.status_code == 400 and "status" in bad.json()["error"]["details"]["fields"]


def test_deleting_an_ended_generation_removes_its_files_and_row_not_its_charge(
    team: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, who = team
    done = render(client, "a fox", who["ada"])
    before = client.get("/account", headers=who["ada"]).json()["credits"]
    url, path = done["images"][0]["url"], f"/generations/{done['request_id']}"
    assert client.get(url).status_code == 200
    assert client.delete(path, headers=who["bob"]).status_code == 404  # not bob's
    response = client.delete(path, headers=who["ada"])
    assert response.status_code == 200 and response.json()["status"] == "deleted"
    assert client.get(path, headers=who["ada"]).status_code == 404
    assert client.get(url).status_code == 404
    history = client.get("/generations/history", headers=who["ada"]).json()
    assert history["itemsTotal"] == 0
    assert client.get("/account", headers=who["ada"]).json()["credits"] == before


def test_deleting_an_active_generation_cancels_it(make_client: AppFactory) -> None:
    from fakes import Stalls

    client = make_client(renderer=Stalls(Solid()))
    pending = generate(client, "a slow fox")
    response = client.delete(f"/generations/{pending['request_id']}")
    assert response.status_code == 200 and response.json()["status"] == "failed"
    assert wait_done(client, pending["request_id"])["error"]["code"] == "CANCELLED"


def test_admin_routes_are_for_administrators_only(
    team: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, who = team
    assert client.get("/account", headers=who["root"]).json()["admin"] is True
    assert client.get("/account", headers=who["ada"]).json()["admin"] is False
    for method, path in [("GET", "/admin/queue"), ("GET", "/admin/users"),
                         ("POST", "/admin/users"), ("POST", "/admin/users/ada/credits"),
                         ("POST", "/admin/users/ada/revoke"), ("GET", "/admin/activity"),
                         ("POST", "/admin/generations/x/cancel")]:  # fmt: skip
        response = client.request(method, path, headers=who["ada"], json={})
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "FORBIDDEN"
        assert client.request(method, path, json={}).status_code == 401


def test_an_administrator_manages_users_credits_and_tokens(
    team: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, who = team
    created = client.post("/admin/users", headers=who["root"], json={"name": "cyd", "credits": 5})
    assert created.status_code == 201, created.text
    cyd = bearer(created.json()["token"])
    assert client.get("/account", headers=cyd).json()["credits"]["balance"] == 5
    granted = client.post("/admin/users/cyd/credits", headers=who["root"], json={"amount": 10})
    assert granted.json()["credits"]["balance"] == 15
    taken = client.post("/admin/users", headers=who["root"], json={"name": "cyd"})
    assert taken.status_code == 400
    nobody = client.post("/admin/users/nobody/credits", headers=who["root"], json={"amount": 1})
    assert nobody.status_code == 404
    infinite = client.post("/admin/users/cyd/credits", headers=who["root"],
                           content=b'{"amount": 1e999}')  # fmt: skip
    assert infinite.status_code == 400
    users = {u["name"]: u for u in client.get("/admin/users", headers=who["root"]).json()["items"]}
    assert users["cyd"]["credits"]["balance"] == 15 and users["root"]["admin"] is True
    revoked = client.post("/admin/users/cyd/revoke", headers=who["root"])
    assert revoked.json()["revoked"] == 1
    assert client.get("/account", headers=cyd).status_code == 401


def test_the_queue_across_users_and_cancelling_any(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakes import Stalls

    client = make_client(renderer=Stalls(Solid()))
    root = bearer(add_user(capsys, tmp_path / "data", "root", "--admin"))
    ada = bearer(add_user(capsys, tmp_path / "data", "ada"))
    pending = generate(client, "ada's slow fox", ada)
    queue = client.get("/admin/queue", headers=root).json()["items"]
    assert [(item["user"], item["prompt"]) for item in queue] == [("ada", "ada's slow fox")]
    cancelled = client.post(f"/admin/generations/{pending['request_id']}/cancel", headers=root)
    assert cancelled.json()["cancelled"] is True
    assert wait_done(client, pending["request_id"], headers=ada)["error"]["code"] == "CANCELLED"
    assert client.get("/admin/queue", headers=root).json()["items"] == []


def test_activity_counts_the_last_hour(team: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, who = team
    render(client, "a fox", who["ada"], options={"num_images": 2})
    activity = client.get("/admin/activity", headers=who["root"]).json()
    assert len(activity["minutes"]) == len(activity["images"]) == len(activity["queue_depth"]) == 60
    assert sum(activity["images"]) == 2
    (speed,) = activity["render_seconds"]
    assert speed["images"] == 2 and speed["seconds_per_image"] >= 0


def test_samplers_and_the_infotext_of_each_image(
    team: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, who = team
    samplers = client.get("/samplers", headers=who["ada"]).json()["samplers"]
    assert {"id": "dpmpp_2m_karras", "sampler": "DPM++ 2M", "schedule": "Karras"} in samplers
    done = render(client, "a fox", who["ada"], settings={"sampler": "dpmpp_2m_karras"})
    detail = client.get(f"/generations/{done['request_id']}", headers=who["ada"]).json()
    assert detail["prompt"] == "a fox"
    assert detail["images"][0]["infotext"].startswith("a fox\nSteps: 10, Sampler: DPM++ 2M")


def test_users_set_admin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         make_client: AppFactory) -> None:  # fmt: skip
    client = make_client(renderer=Fake(Solid()))
    token = bearer(add_user(capsys, tmp_path / "data", "ada"))
    assert client.get("/admin/users", headers=token).status_code == 403
    assert main(["users", "set", "ada", "--admin", "--data-dir", str(tmp_path / "data")]) == 0
    assert client.get("/admin/users", headers=token).status_code == 200
    assert main(["users", "set", "ada", "--no-admin", "--data-dir", str(tmp_path / "data")]) == 0
    assert client.get("/admin/users", headers=token).status_code == 403


def test_what_the_console_uses_is_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    wanted = [("/admin/queue", "get"), ("/admin/users", "post"),
              ("/admin/users/{name}/credits", "post"), ("/admin/activity", "get"),
              ("/samplers", "get"), ("/generations/{request_id}", "delete")]  # fmt: skip
    for path, method in wanted:
        assert method in paths[path], path
    assert "403" in paths["/admin/users"]["post"]["responses"]
