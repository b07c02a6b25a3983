"""Per-user limits set with `darkroom users add/set`, stored in the database: the active
and poll limits a user gets, shown in GET /account and `users list`, on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import SMALL, AppFactory, bearer, generate
from fakes import Solid, Stalls
from server.cli import main


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


def users(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    code = main(["users", *args, "--data-dir", str(data)])
    out, err = capsys.readouterr()
    return code, out, err


def limits(client: TestClient, headers: dict) -> dict:
    return client.get("/account", headers=headers).json()["limits"]


def submit(client: TestClient, headers: dict) -> int:
    body = {"prompt": "a fox", "settings": {**SMALL, "seed": 1}}
    return client.post("/image/generate", json=body, headers=headers).status_code


def test_limits_per_user_from_the_command_line(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    stalls = Stalls(Solid())
    client = make_client(renderer=stalls, max_active_per_user=5, poll_rate=0.0)
    code, out, _ = users(capsys, data, "add", "bob", "--max-active", "1", "--poll-rate", "2")
    assert code == 0
    bob = bearer(out.strip().splitlines()[-1])
    alice = bearer(users(capsys, data, "add", "alice")[1].strip().splitlines()[-1])
    assert limits(client, bob)["concurrent_generations"] == 1
    assert limits(client, bob)["polls_per_second"] == 2
    assert limits(client, alice)["concurrent_generations"] == 5  # the server's flags
    assert limits(client, alice)["polls_per_second"] == 0

    first = generate(client, headers=bob)
    assert stalls.started.wait(10)
    refused = client.post(
        "/image/generate", json={"prompt": "a fox", "settings": SMALL}, headers=bob
    )
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["details"]["limit"] == 1
    assert [submit(client, alice) for _ in range(2)] == [202, 202]  # alice has her own

    # Raised while the server runs: the next request sees it.
    code, out, _ = users(capsys, data, "set", "bob", "--max-active", "2")
    assert code == 0 and "max active 2, poll rate 2/s" in out
    assert limits(client, bob)["concurrent_generations"] == 2
    assert submit(client, bob) == 202
    assert submit(client, bob) == 429

    # Bob's poll rate is his own although the server's is unlimited (burst 3, then 429).
    url = f"/generations/{first['request_id']}/status"
    codes = [client.get(url, headers=bob).status_code for _ in range(12)]
    assert 429 in codes and codes[:3] == [200, 200, 200]
    assert all(client.get(url, headers=alice).status_code == 404 for _ in range(5))

    code, out, _ = users(capsys, data, "list")
    row = next(line for line in out.splitlines() if line.startswith("bob "))
    assert row.split()[-2:] == ["2", "2"]
    alice_row = next(line for line in out.splitlines() if line.startswith("alice "))
    assert alice_row.split()[-2:] == ["default", "default"]

    code, out, _ = users(capsys, data, "set", "bob", "--max-active", "default", "--poll-rate", "0")
    assert code == 0 and "max active server default, poll rate no limit" in out
    assert limits(client, bob)["concurrent_generations"] == 5
    assert limits(client, bob)["polls_per_second"] == 0
    assert all(client.get(url, headers=bob).status_code == 200 for _ in range(12))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("set", "bob", "--max-active", "-1"), "--max-active must be 0 (no limit) or more"),
        (("set", "bob", "--poll-rate", "nan"), "--poll-rate must be 0 (no limit) or more"),
        (("set", "nobody", "--max-active", "2"), "no user named 'nobody'"),
        (("add", "carl", "--poll-rate", "-2"), "--poll-rate must be 0 (no limit) or more"),
    ],
)
def test_bad_limits_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str
) -> None:
    assert users(capsys, tmp_path, "add", "bob")[0] == 0
    code, _, err = users(capsys, tmp_path, *args)
    assert code == 1 and says in err
    code, out, _ = users(capsys, tmp_path, "list")
    assert "carl" not in out
    assert next(line for line in out.splitlines() if line.startswith("bob ")).split()[-2:] == [
        "default", "default",
    ]  # fmt: skip
