"""Provider secrets go only to the provider, and what /health and /metrics show of the
providers holds no credentials, tokens or upstream error bodies; a user's cancellation is
not a provider failure."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fal_double import FalDouble
from PIL import Image
from remote_fixtures import fal, fal_client, wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conftest import AppFactory, generate, wait_done
from processes import free_port
from server.config import Settings
from server.providers.rundiffusion import RunDiffusion

__all__ = ["fal"]  # the fixture


class Recorder:
    """Another host: answers a PNG under /files/, JSON [] elsewhere, and records the
    Authorization header of every request (None when there was none)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.authorizations: list[str | None] = []
        app = Starlette(routes=[Route("/{path:path}", self.answer, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", ws="none")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def answer(self, request: Request) -> Response:
        self.authorizations.append(request.headers.get("authorization"))
        if request.url.path.startswith("/files/"):
            buffer = io.BytesIO()
            Image.new("RGB", (256, 256), (1, 2, 3)).save(buffer, "PNG")
            return Response(buffer.getvalue(), media_type="image/png")
        return JSONResponse([])

    def __enter__(self) -> Recorder:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def foreign() -> Iterator[Recorder]:
    with Recorder() as recorder:
        yield recorder


def test_fal_s_key_is_not_sent_to_the_host_of_its_image_urls(
    make_client: AppFactory, fal: FalDouble, foreign: Recorder
) -> None:
    client = fal_client(make_client, fal)
    fal.image_base = foreign.url  # fal's results live on a CDN
    body = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert body["status"] == "completed", body  # the double answers only with the key
    assert foreign.authorizations == [None]


def test_rundiffusion_credentials_go_to_its_own_host_only(
    foreign: Recorder, tmp_path: Any
) -> None:
    with Recorder() as own:
        url = own.url.replace("http://", "http://bob:s3cret@")
        provider = RunDiffusion(Settings(data_dir=tmp_path, rundiffusion_url=url))
        try:
            provider.remote_loras()
            provider.http.request("GET", f"{foreign.url}/elsewhere")
        finally:
            provider.close()
        assert own.authorizations == ["Basic Ym9iOnMzY3JldA=="]  # bob:s3cret
        assert foreign.authorizations == [None]
        assert provider.describe()["url"] == own.url


def test_health_and_metrics_show_no_credentials_or_upstream_bodies(
    make_client: AppFactory, fal: FalDouble
) -> None:
    closed = f"http://bob:s3cret@127.0.0.1:{free_port()}/"
    client = fal_client(make_client, fal, rundiffusion_url=closed)
    fal.complete_error = "Traceback: SECRET-BODY at 0xdeadbeef"
    for provider in ("fal", "rundiffusion"):
        body = wait_done(client, generate(client, options={"provider": provider})["request_id"])
        assert body["error"]["code"] == "PROVIDER_ERROR"
    health = client.get("/health")
    providers = health.json()["providers"]
    assert providers["fal"]["last_error"] == "fal answered HTTP 200 (runner_disconnected)"
    assert "could not be reached" in providers["rundiffusion"]["last_error"]
    assert providers["rundiffusion"]["url"] == closed.replace("bob:s3cret@", "").rstrip("/")
    shown = health.text + client.get("/metrics").text
    for secret in ("s3cret", "bob", "SECRET-BODY", "0xdeadbeef", "test-key-123"):
        assert secret not in shown


def test_a_cancellation_is_not_a_provider_failure(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    fal.release.clear()
    request_id = generate(client, options={"provider": "fal"})["request_id"]
    status = f"/generations/{request_id}/status"
    wait_for(lambda: client.get(status).json()["status"] == "processing")
    client.post(f"/generations/{request_id}/cancel")
    wait_for(lambda: fal.cancels != [])
    metrics = client.get("/metrics").text
    assert 'darkroom_provider_jobs_total{code="CANCELLED",provider="fal",status="failed"} 1.0' \
        in metrics
    assert 'darkroom_provider_failures_total{provider="fal"}' not in metrics
    assert client.get("/health").json()["providers"]["fal"]["last_error"] is None
    fal.release.set()
    fal.reject_422 = True  # a real failure counts
    failed = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert failed["error"]["details"]["upstream_status"] == 422
    assert 'darkroom_provider_failures_total{provider="fal"} 1.0' in client.get("/metrics").text
