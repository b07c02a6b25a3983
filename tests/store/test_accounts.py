"""Users, tokens, open mode and isolation, through the HTTP API and the `darkroom` command."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import AppFactory, bearer, generate, render
from fakes import Fake, Solid
from server.cli import main
from server.contract import CONTRACT_PREFIX
from server.store import Store
from server.store.migrations import MIGRATIONS


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    """Every test here that opens a database runs on SQLite and on PostgreSQL."""
    return each_engine


def add_user(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str, *flags: str) -> str:
    assert main(["users", "add", name, "--data-dir", str(data_dir), *flags]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def darkroom(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_unauthorized(response, reason: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "UNAUTHORIZED"
    assert response.json()["error"]["details"]["reason"] == reason
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="darkroom"')


@pytest.fixture
def fast(make_client: AppFactory):  # type: ignore[no-untyped-def]
    def start(**overrides):  # type: ignore[no-untyped-def]
        return make_client(renderer=Fake(Solid()), **overrides)

    return start


def test_open_mode_needs_no_token_on_loopback(client: TestClient) -> None:
    account = client.get("/account").json()
    assert account["user"] == "local" and account["open_mode"] is True
    assert account["credits"]["unlimited"] is True
    assert account["limits"]["concurrent_generations"] == 5
    generate(client)


def test_with_users_every_api_route_needs_a_valid_token(
    fast, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = fast()
    token = add_user(capsys, tmp_path / "data", "alice")  # while the server runs
    assert token.startswith("drk_") and len(token) > 40
    for method, path in [
        ("POST", "/image/generate"),
        ("GET", "/generations/abc/status"),
        ("GET", "/generations/history"),
        ("POST", "/generations/abc/cancel"),
        ("GET", "/loras/available"),
        ("GET", "/presets"),
        ("POST", "/presets/save"),
        ("GET", "/account"),
        ("GET", f"{CONTRACT_PREFIX}/loras/available"),
    ]:
        assert_unauthorized(client.request(method, path), "missing_token")
        wrong = client.request(method, path, headers=bearer(token[:-2] + "xx"))
        assert_unauthorized(wrong, "invalid_token")
    assert_unauthorized(
        client.get("/account", headers={"Authorization": f"Basic {token}"}), "invalid_token"
    )
    assert client.get("/account", headers=bearer(token)).json()["user"] == "alice"
    assert client.get("/health").status_code == 200  # probes need no token


def test_a_token_revoked_in_the_server_process_is_refused_at_once(fast) -> None:  # type: ignore[no-untyped-def]
    client = fast()
    accounts = client.app.state.darkroom.accounts
    _, token = accounts.add_user("bob", None)
    assert client.get("/account", headers=bearer(token)).json()["user"] == "bob"
    assert accounts.revoke("bob") == 1
    assert_unauthorized(client.get("/account", headers=bearer(token)), "invalid_token")


def test_tokens_rotate_and_revoke_at_once(
    fast, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = fast()
    data = str(tmp_path / "data")
    first = add_user(capsys, tmp_path / "data", "alice")
    assert main(["users", "token", "alice", "--data-dir", data]) == 0
    second = capsys.readouterr().out.strip()
    assert second.startswith("drk_") and second != first
    for token in (first, second):
        assert client.get("/account", headers=bearer(token)).status_code == 200
    code, output = darkroom(capsys, "users", "revoke", "alice", "--data-dir", data)
    assert code == 0 and "revoked 2 token(s)" in output
    for token in (first, second):
        assert_unauthorized(client.get("/account", headers=bearer(token)), "invalid_token")
    code, output = darkroom(capsys, "users", "revoke", "nobody", "--data-dir", data)
    assert code == 1 and "no user named 'nobody'" in output
    code, output = darkroom(capsys, "users", "add", "alice", "--data-dir", data)
    assert code == 1 and "already exists" in output


def test_tokens_are_stored_only_as_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database_url: str | None
) -> None:
    token = add_user(capsys, tmp_path, "alice")
    secret = token.split("_", 2)[2]
    store = Store(database_url or tmp_path / "darkroom.sqlite3")
    try:
        dump = "\n".join(
            repr(store.fetch_all(f"SELECT * FROM {table}")) for table in store.engine.tables()
        )
    finally:
        store.close()
    assert "alice" in dump and secret not in dump


def test_open_mode_only_on_loopback_unless_insecure(
    fast, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exposed = fast(host="0.0.0.0")
    assert_unauthorized(exposed.get("/account"), "missing_token")
    exposed.close()
    insecure = fast(host="0.0.0.0", insecure_no_auth=True)
    assert insecure.get("/account").json()["user"] == "local"
    insecure.close()
    behind_proxy = fast()
    assert_unauthorized(
        behind_proxy.get("/account", headers={"X-Forwarded-For": "203.0.113.9"}), "missing_token"
    )
    behind_proxy.close()

    code, output = darkroom(
        capsys, "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "empty")
    )
    assert code == 2 and "refusing to listen on 0.0.0.0 with no users" in output


def test_users_see_only_their_own_generations_presets_and_images(
    fast, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = fast()
    alice = bearer(add_user(capsys, tmp_path / "data", "alice"))
    bob = bearer(add_user(capsys, tmp_path / "data", "bob"))
    done = render(client, headers=alice)
    request_id = done["request_id"]

    for method, path in [
        ("GET", f"/generations/{request_id}/status"),
        ("POST", f"/generations/{request_id}/cancel"),
        ("DELETE", f"/generations/{request_id}"),
    ]:
        theirs = client.request(method, path, headers=bob)
        unknown = client.request(method, path.replace(request_id, "f" * 32), headers=bob)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "NOT_FOUND"
    assert client.get("/generations/history", headers=bob).json()["itemsTotal"] == 0
    assert client.get("/generations/history", headers=alice).json()["itemsTotal"] == 1

    preset = {"name": "mine", "settings": {"steps": 40}}
    assert client.post("/presets/save", json=preset, headers=alice).status_code == 201
    other = {"name": "mine", "settings": {"steps": 12}}
    assert client.post("/presets/save", json=other, headers=bob).status_code == 201
    [bobs] = client.get("/presets", headers=bob).json()
    assert bobs["settings"] == {"steps": 12}

    # Image links are capabilities: whoever holds one may fetch it, nobody can guess one.
    image = done["images"][0]
    token = image["vault_url"].rsplit("/", 1)[1].split(".")[0]
    assert len(base64.urlsafe_b64decode(token + "==")) >= 16  # 128 random bits
    guess = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert client.get(image["vault_url"].replace(token, guess)).status_code == 404
    assert client.get(image["url"].replace(token, guess)).status_code == 404
    assert client.get(image["vault_url"]).status_code == 200


def test_upgrade_gives_earlier_data_to_the_local_user(tmp_path: Path) -> None:
    path = tmp_path / "data" / "darkroom.sqlite3"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        db.executescript(script)
        db.execute(f"PRAGMA user_version={number}")
    db.execute(
        "INSERT INTO generations (request_id, status, prompt, request_json, seed, seed_fixed,"
        " work_units, created_at, credits_used) VALUES ('old', 'completed', 'p', '{}', 1, 1,"
        " 0.6, 1.0, 0.5)"
    )
    db.execute(
        "INSERT INTO presets (name, settings_json, loras_json, tags_json, created_at,"
        " updated_at) VALUES ('kept', '{}', '[]', '[]', 1.0, 1.0)"
    )
    db.commit()
    db.close()
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT user_id FROM generations").fetchone() == (1,)
        assert db.execute("SELECT user_id, name FROM presets").fetchone() == (1, "kept")


def test_two_commands_on_a_new_data_dir_migrate_it_once(
    tmp_path: Path, database_url: str | None
) -> None:
    """Three processes open a new database at once (on PostgreSQL: three nodes starting)."""
    command = [sys.executable, "-m", "server.cli", "users", "add", "--data-dir", str(tmp_path)]
    runs = [
        subprocess.Popen([*command[:5], name, *command[5:]], stdout=subprocess.PIPE, text=True)
        for name in ("ann", "ben", "cat")
    ]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0]
    assert all(output.strip().startswith("drk_") for output in outputs)
    store = Store(database_url or tmp_path / "darkroom.sqlite3")
    try:
        names = [row["name"] for row in store.fetch_all("SELECT name FROM users ORDER BY id")]
        assert names[0] == "local" and sorted(names[1:]) == ["ann", "ben", "cat"]
    finally:
        store.close()
