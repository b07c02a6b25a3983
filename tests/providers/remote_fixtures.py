"""What the provider tests share: the fal double as a fixture, an app wired to it, a user
with credits, and a wait."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fal_double import KEY, FalDouble
from starlette.testclient import TestClient

from conftest import AppFactory, bearer

FAST = {"remote_poll": 0.05, "remote_retry_base": 0.01, "remote_retries": 3, "remote_timeout": 5}


@pytest.fixture
def fal() -> Iterator[FalDouble]:
    with FalDouble() as double:
        yield double


def fal_client(make_client: AppFactory, fal: FalDouble, **overrides: Any) -> TestClient:
    return make_client(fal_key=KEY, fal_url=fal.url, **{**FAST, **overrides})


def alice(client: TestClient, credits: float = 10.0) -> dict[str, str]:
    _, token = client.app.state.darkroom.accounts.add_user("alice", credits)  # type: ignore[attr-defined]
    return bearer(token)


def credits(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    return client.get("/account", headers=headers).json()["credits"]


def wait_for(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
