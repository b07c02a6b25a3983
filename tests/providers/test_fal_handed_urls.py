"""URLs fal hands back (status, result, images) are fetched only where the URL safety rule
allows: on the configured fal host, or on public addresses. A result image "on" another
host that resolves to this machine's network fails the job uncharged, unfetched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fal_double import KEY, FalDouble

from conftest import AppFactory, bearer, generate, wait_done
from server.net.ssrf import handed_url_problem

FAST = {"remote_poll": 0.05, "remote_retry_base": 0.01, "remote_retries": 1, "remote_timeout": 5}


@pytest.fixture
def fal() -> Iterator[FalDouble]:
    with FalDouble() as double:
        yield double


def test_an_image_url_into_the_local_network_is_not_fetched(
    make_client: AppFactory, fal: FalDouble
) -> None:
    fal.image_base = f"http://localhost:{fal.port}"  # the same double, by another name
    client = make_client(fal_key=KEY, fal_url=fal.url, **FAST)
    _, token = client.app.state.darkroom.accounts.add_user("alice", 10.0)  # type: ignore[attr-defined]
    headers = bearer(token)
    submitted = generate(client, "a fox", headers, options={"provider": "fal"})
    body = wait_done(client, submitted["request_id"], headers=headers)
    assert body["status"] == "failed", body
    error = body["error"]
    assert error["code"] == "PROVIDER_ERROR"
    assert error["details"]["reason"] == "refused_url"
    assert "loopback" in error["message"]
    assert client.get("/account", headers=headers).json()["credits"]["balance"] == 10.0


def test_the_rule() -> None:
    trusted = "http://127.0.0.1:9000"
    assert handed_url_problem("http://127.0.0.1:9000/requests/1/status", trusted) is None
    assert handed_url_problem("http://127.0.0.1:1234/any", trusted) is None  # its host
    assert "loopback" in (handed_url_problem("http://localhost:9000/x", trusted) or "")
    assert "metadata" in (handed_url_problem("http://169.254.169.254/", trusted) or "")
    assert handed_url_problem("http://[2002:a9fe:a9fe::1]/", "https://queue.fal.run")
    assert handed_url_problem("file:///etc/passwd", trusted)
    assert handed_url_problem("https://u:p@fal.media/x.png", "https://queue.fal.run")
