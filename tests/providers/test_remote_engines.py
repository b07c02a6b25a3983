"""Both remote providers on SQLite and on PostgreSQL (a fresh database per test): a remote
job completes on a node of a shared database exactly as on one box: images in the vault,
`metadata.provider`, charged once, its hold released (so a sixth job is not refused by the
5-active limit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fal_double import FalDouble
from remote_fixtures import FAST, alice, credits, fal, fal_client

from conftest import SMALL, AppFactory, generate, wait_done
from processes import ServerProcess
from server.contract import credits_for

__all__ = ["fal"]  # the fixture

COST = credits_for(SMALL["width"], SMALL["height"], SMALL["steps"], 1)


@pytest.fixture
def database_url(each_engine: str | None) -> str | None:
    return each_engine


@pytest.fixture(scope="module")
def a1111(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second Darkroom serving AUTOMATIC1111's API (on its own SQLite file)."""
    path = tmp_path_factory.mktemp("a1111")
    database = f"sqlite:{path / 'remote.sqlite3'}"
    with ServerProcess(path, models_dir, path / "remote.log", "--database", database) as remote:
        yield remote


def stored(client, request_id: str) -> dict:  # type: ignore[no-untyped-def]
    return client.app.state.darkroom.store.generation(request_id)


def test_fal_jobs_complete_charge_once_and_release_their_holds(
    make_client: AppFactory, fal: FalDouble, database_url: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    client = fal_client(make_client, fal, node_id="node-1")
    headers = alice(client)
    first = [
        generate(client, f"job {i}", headers, settings={"seed": 10 + i},
                 options={"provider": "fal"})["request_id"]
        for i in range(5)
    ]  # fmt: skip
    for i, request_id in enumerate(first):
        body = wait_done(client, request_id, headers=headers)
        assert body["status"] == "completed", body
        (image,) = body["images"]
        assert image["metadata"]["provider"] == "fal" and image["metadata"]["seed"] == 10 + i
        assert image["vault_url"].startswith("http://testserver/vault/")
        assert client.get(image["vault_url"]).status_code == 200
        assert body["credits_used"] == pytest.approx(COST, abs=1e-4)
        if database_url is not None:  # watched (leased) by the node that admitted it
            assert stored(client, request_id)["node_id"] == "node-1"
    assert credits(client, headers)["held"] == 0
    assert credits(client, headers)["balance"] == pytest.approx(10 - 5 * COST, abs=1e-4)
    # the five finished jobs hold no slot: a sixth is taken and completes
    sixth = generate(client, "job 6", headers, options={"provider": "fal"})["request_id"]
    assert wait_done(client, sixth, headers=headers)["status"] == "completed"
    assert credits(client, headers) == pytest.approx(
        {"unlimited": False, "balance": 10 - 6 * COST, "held": 0.0, "available": 10 - 6 * COST},
        abs=1e-4,
    )
    assert len(fal.submits) == 6
    assert "finished after it was failed" not in caplog.text
    metrics = client.get("/metrics").text
    assert "darkroom_provider_jobs_total" in metrics and 'provider="fal"' in metrics


def test_rundiffusion_jobs_complete_and_charge_once(
    make_client: AppFactory, a1111: ServerProcess, database_url: str | None
) -> None:
    client = make_client(rundiffusion_url=a1111.base, **FAST)
    headers = alice(client)
    submitted = generate(
        client, "a red fox", headers, settings={"seed": 77}, options={"provider": "rundiffusion"}
    )
    body = wait_done(client, submitted["request_id"], headers=headers)
    assert body["status"] == "completed", body
    (image,) = body["images"]
    assert image["metadata"]["provider"] == "rundiffusion"
    assert image["metadata"]["seed"] == 77 and image["metadata"]["model"] == "tiny-sdxl"
    assert client.get(image["vault_url"]).status_code == 200
    assert credits(client, headers)["held"] == 0
    assert credits(client, headers)["balance"] == pytest.approx(10 - COST, abs=1e-4)
