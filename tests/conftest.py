from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fakes import FakeRenderer  # noqa: E402
from pipelines.sdxl import SDXLRenderer  # noqa: E402
from pipelines.spec import Renderer  # noqa: E402
from pipelines.tiny import build_tiny_model  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import Settings  # noqa: E402

# The PostgreSQL fixtures (module_engine, engine_per_test, each_engine): a module runs on
# both engines by overriding `database_url` with one of them (pgtest.py says which when).
pytest_plugins = ["pgtest", "chromium"]

SMALL = {"width": 256, "height": 256, "steps": 10}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    build_tiny_model(path, loras=2)
    return path


class Preloaded(FakeRenderer):
    """The session's tiny pipeline, loaded once and lent to every app a test starts."""

    def __init__(self, renderer: SDXLRenderer) -> None:
        self._renderer = renderer
        self.model, self.device = renderer.model, renderer.device

    @property
    def loaded_models(self) -> list[str]:
        return self._renderer.loaded_models

    def model_key(self, model: object) -> str:
        return self._renderer.model_key(model)  # type: ignore[arg-type]

    def render(self, spec, on_step=None, should_stop=None, on_latents=None):  # type: ignore[no-untyped-def]
        return self._renderer.render(spec, on_step, should_stop, on_latents)

    def render_batch(self, specs, on_step=None, should_stop=None, on_latents=None):  # type: ignore[no-untyped-def]
        return self._renderer.render_batch(specs, on_step, should_stop, on_latents)


@pytest.fixture(scope="session")
def tiny_renderer(models_dir: Path) -> Preloaded:
    renderer = SDXLRenderer("tiny", models_dir)
    renderer.load()
    return Preloaded(renderer)


AppFactory = Callable[..., TestClient]


@pytest.fixture
def database_url() -> str | None:
    """The database the apps use: None is SQLite in the data dir. tests/store and the
    credit tests override it to run on PostgreSQL too (pgtest.py)."""
    return None


@pytest.fixture
def make_client(
    tmp_path: Path, models_dir: Path, tiny_renderer: Preloaded, database_url: str | None
) -> Iterator[AppFactory]:
    """Start an app on a data dir (default: this test's); close it with `client.close()`
    or at the end of the test. A closed app's data dir can be reopened: that is a restart."""
    stack = ExitStack()

    def start(renderer: Renderer | None = None, wait: bool = True, **overrides: Any) -> TestClient:
        settings = Settings(
            data_dir=overrides.pop("data_dir", tmp_path / "data"),
            database_url=overrides.pop("database_url", database_url),
            models_dir=overrides.pop("models_dir", models_dir),
            model="tiny",
            # Tests poll fast; the poll limit has tests of its own.
            poll_rate=overrides.pop("poll_rate", 0.0),
            # Starlette's TestClient sends `Host: testserver`, a name open mode must be told.
            allowed_hosts=overrides.pop("allowed_hosts", "testserver"),
            **overrides,
        )
        client = TestClient(create_app(settings, renderer or tiny_renderer))
        stack.enter_context(client)
        # close() shuts the app down (its lifespan: workers, threads, the database), as a
        # stopped server is; TestClient's own close() would only close the HTTP transport
        # and leave the app running beside the next one on its data dir.
        client.close = lambda: client.__exit__(None, None, None)  # type: ignore[method-assign]
        if wait:
            wait_healthy(client)
        return client

    with stack:
        yield start


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    return make_client()


def wait_healthy(client: TestClient, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/health")
        if response.status_code == 200:
            return response.json()
        time.sleep(0.02)
    raise AssertionError(f"server not healthy: {response.json()}")


def generate(
    client: TestClient, prompt: str = "a red fox", headers: dict | None = None, **parts: Any
) -> dict:
    """Submit a small generation; `settings`/`options` merge over small fast defaults."""
    body = {
        "prompt": prompt,
        "settings": {**SMALL, "seed": 42, **parts.pop("settings", {})},
        "options": {"format": "png", **parts.pop("options", {})},
        **parts,
    }
    response = client.post("/image/generate", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_done(
    client: TestClient, request_id: str, timeout: float = 120, headers: dict | None = None
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/generations/{request_id}/status", headers=headers).json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.02)
    raise AssertionError(f"generation {request_id} did not finish: {body}")


def render(
    client: TestClient, prompt: str = "a red fox", headers: dict | None = None, **parts: Any
) -> dict:
    request_id = generate(client, prompt, headers, **parts)["request_id"]
    body = wait_done(client, request_id, headers=headers)
    assert body["status"] == "completed", body
    return body


def fetch_image(client: TestClient, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def pixels(client: TestClient, body: dict, index: int = 0) -> bytes:
    return fetch_image(client, body["images"][index]["url"]).convert("RGB").tobytes()
