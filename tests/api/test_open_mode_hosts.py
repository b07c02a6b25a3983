"""Open mode serves only this machine: a Host or browser Origin naming another machine (DNS
rebinding, a tunnel or proxy under another name) is a 403 in the API's error shape, unless
--allowed-hosts names it; token mode and --insecure-no-auth are unchanged. Also checked in
a real server process, with the flags and DARKROOM_* variables it reads."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from conftest import AppFactory, bearer
from fakes import Fake, Solid
from processes import ServerProcess
from server.cli import main
from server.config import Settings

A1111_OPTIONS = "/sdapi/v1/options"


@pytest.fixture
def strict(make_client: AppFactory) -> TestClient:
    """Open mode with no --allowed-hosts (the TestClient's own Host is then a stranger)."""
    return make_client(Fake(Solid()), allowed_hosts="")


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8000", "127.0.0.1:8000", "127.9.9.9", "[::1]:8000", "LOCALHOST."],
)
def test_loopback_hosts_are_served(strict: TestClient, host: str) -> None:
    response = strict.get("/account", headers={"Host": host})
    assert response.status_code == 200, response.text
    assert response.json()["open_mode"] is True
    assert strict.get(A1111_OPTIONS, headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "localhost.evil.example", "192.168.1.5:8000",
             "[2001:db8::1]:80", "testserver"],
)  # fmt: skip
def test_other_hosts_are_refused_in_both_shapes(strict: TestClient, host: str) -> None:
    contract = strict.get("/account", headers={"Host": host})
    assert contract.status_code == 403, contract.text
    error = contract.json()["error"]
    assert error["code"] == "FORBIDDEN" and "--allowed-hosts" in error["message"]
    assert error["details"] == {"reason": "host_not_allowed", "header": "host"}
    generate = strict.post("/image/generate", json={"prompt": "a fox"}, headers={"Host": host})
    assert generate.status_code == 403
    assert strict.get("/generations/history", headers={"Host": "localhost"}).json()[
        "itemsTotal"
    ] == 0  # nothing was admitted
    a1111 = strict.get(A1111_OPTIONS, headers={"Host": host})
    assert a1111.status_code == 403
    body = a1111.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert "--allowed-hosts" in body["detail"]


def test_a_browser_origin_must_be_local_too(strict: TestClient) -> None:
    local = {"Host": "127.0.0.1:8000"}
    for origin in ("http://localhost:3000", "http://127.0.0.1:8000", "http://[::1]"):
        response = strict.get("/account", headers={**local, "Origin": origin})
        assert response.status_code == 200, (origin, response.text)
    for origin in ("https://evil.example", "null", "http://evil.example:8000"):
        response = strict.get("/account", headers={**local, "Origin": origin})
        assert response.status_code == 403, origin
        assert response.json()["error"]["details"]["header"] == "origin"


def test_allowed_hosts_names_more(make_client: AppFactory) -> None:
    client = make_client(Fake(Solid()), allowed_hosts="darkroom.lan, .home.arpa")
    for host in ("darkroom.lan", "darkroom.lan:8000", "gpu.home.arpa:8000", "localhost"):
        assert client.get("/account", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "home.arpa.evil.example", "xdarkroom.lan"):
        assert client.get("/account", headers={"Host": host}).status_code == 403, host
    origin = {"Host": "darkroom.lan", "Origin": "http://darkroom.lan:8000"}
    assert client.get("/account", headers=origin).status_code == 200
    client.close()
    anything = make_client(Fake(Solid()), allowed_hosts="*")
    assert anything.get("/account", headers={"Host": "whatever.example"}).status_code == 200


def test_token_mode_and_insecure_no_auth_are_unchanged(
    make_client: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    insecure = make_client(Fake(Solid()), host="0.0.0.0", insecure_no_auth=True, allowed_hosts="")
    assert insecure.get("/account", headers={"Host": "10.0.0.5:8000"}).status_code == 200
    insecure.close()
    assert main(["users", "add", "alice", "--data-dir", str(tmp_path / "data")]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    client = make_client(Fake(Solid()), allowed_hosts="")
    proxied = {**bearer(token), "Host": "images.example.com", "Origin": "https://chat.example"}
    assert client.get("/account", headers=proxied).json()["user"] == "alice"
    # Without a token a stranger Host gets the usual 401, not a hint about open mode.
    assert client.get("/account", headers={"Host": "images.example.com"}).status_code == 401


def test_the_flags_and_variables() -> None:
    from server.cli import build_parser

    flags = vars(
        build_parser().parse_args(
            ["serve", "--allowed-hosts", "a.lan,b.lan", "--metrics-token", "m"]
        )
    )
    flags.pop("command")
    settings = Settings.load(flags, environ={})
    assert settings.allowed_hosts == "a.lan,b.lan" and settings.metrics_token == "m"
    assert "metrics_token='m'" not in repr(settings)  # kept out of logs
    env = {"DARKROOM_ALLOWED_HOSTS": "c.lan", "DARKROOM_METRICS_TOKEN": "n"}
    settings = Settings.load({}, environ=env)
    assert settings.allowed_hosts == "c.lan" and settings.metrics_token == "n"


def test_a_real_server(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`darkroom serve` with --allowed-hosts and DARKROOM_METRICS_TOKEN, over real HTTP."""
    monkeypatch.setenv("DARKROOM_METRICS_TOKEN", "scrape-me")
    data = tmp_path / "data"
    flags = ("--devices", "none", "--allowed-hosts", "darkroom.lan")
    with ServerProcess(data, models_dir, tmp_path / "server.log", *flags) as server:
        assert httpx.get(f"{server.base}/account").json()["open_mode"] is True
        lan = httpx.get(f"{server.base}/account", headers={"Host": "darkroom.lan:80"})
        assert lan.status_code == 200
        rebound = httpx.get(f"{server.base}/account", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403 and "--allowed-hosts" in rebound.text
        webui = httpx.get(f"{server.base}//sdapi/v1/options", headers={"Host": "attacker.example"})
        assert webui.status_code == 403 and "detail" in webui.json()
        # Open WebUI's base URL with a trailing slash: //sdapi/v1/options is the route.
        assert httpx.get(f"{server.base}//sdapi/v1/options").status_code == 200
        assert httpx.get(f"{server.base}/metrics").status_code == 401
        scraped = httpx.get(f"{server.base}/metrics", headers=bearer("scrape-me"))
        assert scraped.status_code == 200 and "darkroom_queue_depth" in scraped.text
        assert httpx.get(f"{server.base}/openapi.json").status_code == 200
        assert httpx.get(f"{server.base}/health").status_code == 200
