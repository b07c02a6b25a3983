"""darkroom_client's Client and AsyncClient against a real `darkroom serve` process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client_fixtures import SMALL, LiveServer, live_server
from darkroom_client import (
    AsyncClient,
    Cancelled,
    Client,
    DarkroomError,
    Generation,
    InvalidLora,
    LimitExceeded,
    NotFound,
    ProviderError,
    QuotaExceeded,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
)

USERS = {name: () for name in ("alice", "carol", "dave", "erin")} | {"poor": ("--credits", "0.01")}


@pytest.fixture(scope="module")
def database_url(module_engine: str | None) -> str | None:
    """Every test here runs on SQLite, then on PostgreSQL (tests/pgtest.py)."""
    return module_engine


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, database_url: str | None
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("client-api")
    yield from live_server(root, models_dir, USERS, "--max-active-per-user", "2")


def client_for(server: LiveServer, user: str = "alice", **options: object) -> Client:
    return Client(server.url, server.tokens[user], **options)


def test_environment_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_URL", "http://example.test:9000/")
    monkeypatch.setenv("DARKROOM_TOKEN", "secret")
    client = Client()
    assert client.url == "http://example.test:9000" and client.token == "secret"
    monkeypatch.delenv("DARKROOM_URL")
    assert Client().url == "http://127.0.0.1:8000"


def test_sync_client_every_method(server: LiveServer, tmp_path: Path) -> None:
    with client_for(server) as client:
        account = client.account()
        assert account["user"] == "alice" and account["limits"]["concurrent_generations"] == 2
        loras = client.loras()
        assert {lora["name"] for lora in loras} == {"Tiny Ink", "Tiny Neon"}

        seen: list[Generation] = []
        generation = client.generate(
            "a red fox",
            **SMALL,
            seed=7,
            n=2,
            cfg=6,
            sampler="euler",
            negative_prompt="fog",
            format="png",
            loras=[(loras[0]["id"], 0.5)],
            on_progress=seen.append,
        )
        assert generation.status == "completed" and generation.error is None
        assert generation.seeds == [7, 8]
        assert {g.status for g in seen} >= {"processing", "completed"}
        assert any(g.step for g in seen)  # steps came in (events)
        image = generation.images[0]
        assert image.vault_url and image.metadata["width"] == 256
        assert image.bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        paths = generation.save(tmp_path)
        assert [p.name for p in paths] == [
            f"{generation.request_id}-7.png",
            f"{generation.request_id}-8.png",
        ]
        assert paths[1].read_bytes() == generation.images[1].bytes()

        page = client.history(page=1, per_page=1, has_seed=True)
        assert page["items"][0].request_id == generation.request_id
        assert page["items"][0].raw["settings"]["seed"] == 7

        pending = client.submit("a blue fox", **SMALL, seed=1)
        assert pending.status in ("pending", "processing")
        assert client.status(pending.request_id).request_id == pending.request_id
        assert client.wait(pending.request_id).status == "completed"
        # A finished generation cannot be cancelled: the answer says so.
        assert client.cancel(pending.request_id).status == "completed"
        # It can be deleted, by its owner: then it is gone, files and all.
        with client_for(server, "carol") as carol, pytest.raises(NotFound):
            carol.delete(pending.request_id)
        file_url = client.status(pending.request_id).images[0].url
        client.delete(pending.request_id)
        with pytest.raises(NotFound):
            client.status(pending.request_id)
        assert httpx.get(file_url).status_code == 404


def test_polling_when_events_are_off(server: LiveServer) -> None:
    calls: list[str] = []

    def record(request: httpx.Request) -> None:
        calls.append(request.url.path)

    http = httpx.Client(event_hooks={"request": [record]})
    with client_for(server, http=http, use_events=False, poll_interval=0.2) as client:
        generation = client.generate("a fox", **SMALL, seed=3)
    assert generation.status == "completed"
    assert not any(path.endswith("/events") for path in calls)
    assert any(path.endswith("/status") for path in calls)


def test_async_client_every_method(server: LiveServer, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, server.tokens["alice"]) as client:
            assert (await client.account())["user"] == "alice"
            loras = await client.loras(q="ink")
            assert [lora["name"] for lora in loras] == ["Tiny Ink"]
            steps: list[int] = []
            generation = await client.generate(
                "a fox",
                **SMALL,
                seed=11,
                format="webp",
                on_progress=lambda g: steps.append(g.step or 0),
            )
            assert generation.seeds == [11] and max(steps) > 0
            data = await generation.images[0].abytes()
            assert data[:4] == b"RIFF"
            assert generation.images[0].bytes() == data  # cached, also usable blocking
            paths = await generation.asave(tmp_path)
            assert paths[0].name == f"{generation.request_id}-11.webp"
            page = await client.history(per_page=5)
            assert generation.request_id in [item.request_id for item in page["items"]]
            pending = await client.submit("a fox", **SMALL, seed=12)
            done = await client.wait(pending)
            assert done.status == "completed"
            assert (await client.status(done.request_id)).status == "completed"
            assert (await client.cancel(done.request_id)).status == "completed"
            await client.delete(done.request_id)
            with pytest.raises(NotFound):
                await client.status(done.request_id)
            with pytest.raises(NotFound):
                await client.wait("no-such-generation")
            with pytest.raises(ValidationError):
                await client.submit("a fox", steps=5)

    asyncio.run(main())


def test_models(server: LiveServer) -> None:
    """GET /models is added by the models work; until the server has it, this skips."""
    with client_for(server) as client:
        try:
            models = client.models()
        except NotFound:
            pytest.skip("the server does not serve GET /models yet")
    assert isinstance(models, list) and models


def test_error_classes(server: LiveServer) -> None:
    with client_for(server) as client:
        with pytest.raises(InvalidLora) as invalid:
            client.submit("a fox", **SMALL, loras=[(999, 1.0)])
        assert invalid.value.status_code == 400 and 999 in invalid.value.details["invalid_ids"]

        with pytest.raises(ValidationError) as bad:
            client.submit("a fox", steps=5, cfg=99)
        assert set(bad.value.fields) >= {
            "settings.steps",
            "settings.cfg_scale",
        }

        with pytest.raises(LimitExceeded) as limit:
            client.submit("a fox", **SMALL, n=9)
        assert limit.value.code == "LIMIT_EXCEEDED"

        with pytest.raises(ProviderError):
            client.submit("a fox", **SMALL, provider="fal")

        with pytest.raises(NotFound):
            client.status("0123456789abcdef")

        pending = client.submit("a slow fox", width=256, height=256, steps=150)
        cancelled = client.cancel(pending)
        assert cancelled.status == "failed" and isinstance(cancelled.error, Cancelled)
        with pytest.raises(Cancelled) as stopped:
            client.wait(pending.request_id)
        assert stopped.value.request_id == pending.request_id

    with Client(server.url, "not-a-token") as stranger, pytest.raises(Unauthorized) as who:
        stranger.account()
    assert who.value.status_code == 401

    with client_for(server, "poor") as poor, pytest.raises(QuotaExceeded) as quota:
        poor.generate("an expensive fox", width=1024, height=1024, steps=30)
    assert quota.value.message and str(quota.value).startswith("QUOTA_EXCEEDED: ")


def test_a_full_account_is_waited_out_with_retry_after(server: LiveServer) -> None:
    """Two generations fill carol's two slots: a third submit answers 429 with Retry-After;
    with retries off that is raised, with retries on it is waited out and accepted."""
    with client_for(server, "carol") as client:
        first = [client.submit("a fox", width=256, height=256, steps=60) for _ in range(2)]
        impatient = client_for(server, "carol", max_retries=0)
        with impatient, pytest.raises(LimitExceeded) as full:
            impatient.submit("a third fox", **SMALL)
        assert full.value.status_code == 429 and "retry-after" in full.value.headers
        # As many retries as a loaded machine needs to finish one of the first two.
        with client_for(server, "carol", max_retries=120, max_retry_wait=1) as patient:
            third = patient.submit("a third fox", **SMALL)
            assert patient.retries_waited >= 1
            assert patient.wait(third).status == "completed"
        for generation in first:
            client.cancel(generation)


def test_generate_never_runs_more_than_the_accounts_limit(server: LiveServer) -> None:
    """Six generations from six threads, no retries allowed: a 429 would raise. The client
    holds them to dave's limit of two, so the server never refuses one."""
    with client_for(server, "dave", max_retries=0) as client:
        results: list[Generation] = []
        errors: list[BaseException] = []

        def one(seed: int) -> None:
            try:
                results.append(client.generate("a fox", **SMALL, seed=seed))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors and len(results) == 6
    assert client.concurrency == 2 and client.peak_active == 2


def test_async_generate_is_capped_too(server: LiveServer) -> None:
    async def main() -> AsyncClient:
        async with AsyncClient(server.url, server.tokens["erin"], max_retries=0) as client:
            done = await asyncio.gather(
                *(client.generate("a fox", **SMALL, seed=seed) for seed in range(5))
            )
            assert [g.seeds for g in done] == [[seed] for seed in range(5)]
            return client

    client = asyncio.run(main())
    assert client.concurrency == 2 and client.peak_active == 2


# -- answers our server cannot be made to give on cue: a scripted transport ------------


def scripted(answers: list[httpx.Response], seen: list[float]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return answers.pop(0)

    return httpx.MockTransport(handler)


def busy(status: int, code: str, retry_after: str = "0.2") -> httpx.Response:
    body = {"status": "failed", "error": {"code": code, "message": "busy", "details": {}}}
    return httpx.Response(status, json=body, headers={"Retry-After": retry_after})


def accepted() -> httpx.Response:
    body = {"request_id": "r1", "status": "pending", "credits_used": 0, "generation_id": 1}
    return httpx.Response(202, json=body)


def test_503_and_429_with_retry_after_are_waited_out() -> None:
    seen: list[float] = []
    answers = [busy(503, "SERVICE_UNAVAILABLE"), busy(429, "LIMIT_EXCEEDED"), accepted()]
    http = httpx.Client(transport=scripted(answers, seen))
    with Client("http://darkroom.test", http=http) as client:
        generation = client.submit("a fox")
    assert generation.request_id == "r1" and len(seen) == 3
    assert seen[1] - seen[0] >= 0.2 and seen[2] - seen[1] >= 0.2


def test_retries_are_bounded() -> None:
    seen: list[float] = []
    answers = [busy(503, "SERVICE_UNAVAILABLE", "0") for _ in range(3)]
    http = httpx.Client(transport=scripted(answers, seen))
    client = Client("http://darkroom.test", http=http, max_retries=2)
    with client, pytest.raises(ServiceUnavailable) as gave_up:
        client.submit("a fox")
    assert len(seen) == 3 and gave_up.value.status_code == 503


def test_async_retries_too() -> None:
    seen: list[float] = []
    answers = [busy(503, "SERVICE_UNAVAILABLE", "0.1"), accepted()]

    async def main() -> Generation:
        http = httpx.AsyncClient(transport=scripted(answers, seen))
        async with AsyncClient("http://darkroom.test", http=http) as client:
            return await client.submit("a fox")

    assert asyncio.run(main()).request_id == "r1" and len(seen) == 2


def test_an_error_without_retry_after_is_raised_at_once() -> None:
    seen: list[float] = []
    answers = [busy(429, "LIMIT_EXCEEDED"), accepted()]
    del answers[0].headers["Retry-After"]
    http = httpx.Client(transport=scripted(answers, seen))
    client = Client("http://darkroom.test", http=http)
    with client, pytest.raises(LimitExceeded):
        client.submit("a fox")
    assert len(seen) == 1


def test_unknown_codes_and_non_contract_answers_are_still_darkroom_errors() -> None:
    answers = [
        httpx.Response(
            418, json={"status": "failed", "error": {"code": "TEAPOT", "message": "no"}}
        ),
        httpx.Response(502, text="bad gateway"),
    ]
    http = httpx.Client(transport=scripted(answers, []))
    with Client("http://darkroom.test", http=http) as client:
        with pytest.raises(DarkroomError) as teapot:
            client.account()
        assert teapot.value.code == "TEAPOT" and teapot.value.status_code == 418
        with pytest.raises(DarkroomError) as gateway:
            client.account()
        assert gateway.value.status_code == 502


def test_a_token_is_not_sent_to_another_host() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"image")

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client("http://darkroom.test", "secret", http=http) as client:
        client._run(client.fetch_op("http://darkroom.test/files/a.png"))
        client._run(client.fetch_op("http://cdn.test/a.png"))
    assert sent[0].headers["authorization"] == "Bearer secret"
    assert "authorization" not in sent[1].headers
