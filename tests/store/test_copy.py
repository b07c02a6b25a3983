"""`darkroom db copy` and `darkroom db migrate`: a single box's SQLite data into PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import AppFactory, bearer, generate, render, wait_done
from fakes import Fake, Solid
from pgtest import fresh_database
from server.cli import main
from server.store.migrations import MIGRATIONS


def darkroom(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_copy_moves_a_box_into_postgres_and_refuses_a_non_empty_target(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["users", "add", "alice", "--credits", "5", "--data-dir", str(data)]) == 0
    alice = bearer(capsys.readouterr().out.strip().splitlines()[-1])
    client = make_client(renderer=Fake(Solid()))
    done = render(client, headers=alice)
    cancelled = generate(client, headers=alice, settings={"seed": 7})
    client.post(f"/generations/{cancelled['request_id']}/cancel", headers=alice)
    wait_done(client, cancelled["request_id"], headers=alice)
    preset = {"name": "mine", "settings": {"steps": 40}}
    assert client.post("/presets/save", json=preset, headers=alice).status_code == 201
    before = client.get("/account", headers=alice).json()["credits"]
    link = client.get(f"/generations/{done['request_id']}/status", headers=alice).json()
    client.close()

    with fresh_database() as url:
        code, out = darkroom(capsys, "db", "copy", "--from", f"sqlite:{data}/darkroom.sqlite3",
                             "--to", url)
        assert code == 0, out
        assert "ledger balances of 2 user(s)" in out
        assert "generations" in out and "images" in out

        code, out = darkroom(capsys, "db", "migrate", "--database", url)
        assert code == 0 and f"schema version {len(MIGRATIONS)} (0 migration" in out

        node = make_client(renderer=Fake(Solid()), database_url=url)
        status = node.get(f"/generations/{done['request_id']}/status", headers=alice).json()
        assert status["status"] == "completed"
        assert node.get(link["images"][0]["url"]).status_code == 200  # old link, same key
        assert node.get("/account", headers=alice).json()["credits"] == before
        history = node.get("/generations/history", headers=alice).json()
        assert history["itemsTotal"] == 2
        assert [p["name"] for p in node.get("/presets", headers=alice).json()] == ["mine"]
        assert render(node, headers=alice)["status"] == "completed"  # ids continue
        node.close()

        code, out = darkroom(capsys, "db", "copy", "--from", f"sqlite:{data}/darkroom.sqlite3",
                             "--to", url)
        assert code == 1 and "the target is not empty" in out
