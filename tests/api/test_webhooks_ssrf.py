"""No server-side request forgery through webhooks: URLs refused at submit, addresses refused
again at delivery (a name that resolves elsewhere later, DNS rebinding, gains nothing), and
--webhook-allow-private for tests and LANs. Also the signing and retry arithmetic."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from conftest import AppFactory, generate, wait_done
from fakes import Fake, Solid
from server.cli import build_parser
from server.config import Settings
from server.jobs import webhooks
from server.net import ssrf
from server.store.webhooks import new_secret
from webhook_receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.1.2.3:8000/hook",
    "http://localhost:8000/hook",
    "http://10.1.2.3/hook",
    "http://192.168.1.10/hook",
    "http://172.16.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "gopher://127.0.0.1:6379/_INFO",
    "http:///no-host",
    "not a url",
    "http://[2002:7f00:1::1]/hook",  # 6to4 carrying 127.0.0.1
    "http://[2001:0:a00:1::ffff:ffff]/hook",  # Teredo whose server is 10.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64
    "http://[fec0::1]/hook",  # site-local
    "https://user:secret@hooks.example.com/hook",  # user-info: stored, shown, never sent
]


@pytest.mark.parametrize("url", REFUSED)
def test_submit_refuses_urls_that_are_not_public_http(
    make_client: AppFactory, url: str
) -> None:
    client = make_client(Fake(Solid()))
    body = {"prompt": "a fox", "settings": {"width": 256, "height": 256, "steps": 10},
            "options": {"webhook_url": url}}
    response = client.post("/image/generate", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "options.webhook_url" in error["details"]["fields"], error
    history = client.get("/generations/history").json()
    assert history["itemsTotal"] == 0  # nothing recorded, nothing held


def test_allow_private_permits_loopback(make_client: AppFactory, receiver: Receiver) -> None:
    client = make_client(Fake(Solid()), webhook_allow_private=True)
    request_id = generate(client, options={"webhook_url": receiver.url})["request_id"]
    wait_done(client, request_id)
    receiver.wait_for(1)
    # Only the address check is skipped: the scheme still is not.
    bad = {"prompt": "a fox", "options": {"webhook_url": "ftp://127.0.0.1/"}}
    assert client.post("/image/generate", json=bad).status_code == 400


def test_the_flag_and_the_environment_set_allow_private() -> None:
    flags = vars(build_parser().parse_args(["serve", "--webhook-allow-private"]))
    flags.pop("command")
    assert Settings.load(flags, environ={}).webhook_allow_private is True
    assert Settings.load({}, environ={}).webhook_allow_private is False
    env = {"DARKROOM_WEBHOOK_ALLOW_PRIVATE": "1"}
    assert Settings.load({}, environ=env).webhook_allow_private is True


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT: not public
        ("169.254.169.254", False),
        ("169.254.1.1", False),
        ("fd00:ec2::254", False),
        ("fe80::1", False),
        ("::1", False),
        ("::ffff:10.0.0.1", False),
        ("ff02::1", False),
        ("240.0.0.1", False),
        ("100.100.100.200", False),
    ],
)
def test_address_check(address: str, allowed: bool) -> None:
    assert (ssrf.address_problem(address) is None) is allowed


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> list[str]:
    """Names ending in .test resolve to each of `answers` in turn (the last one repeats)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list:
        if not str(host).endswith(".test"):
            return real(host, port, *args, **kwargs)
        asked.append(host)
        address = answers[min(len(asked), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(ssrf.socket, "getaddrinfo", getaddrinfo)
    return asked


def test_delivery_refuses_a_name_that_now_resolves_to_loopback(
    make_client: AppFactory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Public at submit, loopback at delivery: DNS rebinding.
    asked = fake_dns(monkeypatch, ["93.184.216.34", "127.0.0.1"])
    client = make_client(Fake(Solid()))
    url = f"http://rebind.test:{receiver.port}/hook"
    request_id = generate(client, options={"webhook_url": url})["request_id"]
    assert asked == ["rebind.test"]
    wait_done(client, request_id)
    deadline = time.monotonic() + 30
    while (hook := client.get(f"/generations/{request_id}").json()["webhook"])["state"] != "failed":
        assert time.monotonic() < deadline, hook
        time.sleep(0.05)
    assert hook["attempts"] == 1 and hook["last_status"] is None
    assert "127.0.0.1 is a loopback address" in hook["last_error"]
    assert receiver.received == []


def test_delivery_connects_to_the_checked_address(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, ["127.0.0.1"])
    url = f"http://hooks.test:{receiver.port}/hook"
    secret = new_secret()
    body = b'{"status": "completed"}'
    headers = webhooks.headers_for(secret, "msg_1", body, time.time())
    refused = webhooks.post(url, body, headers, 5, allow_private=False)
    assert refused.refused and refused.outcome == "failed" and receiver.received == []
    attempt = webhooks.post(url, body, headers, 5, allow_private=True)
    assert attempt.status == 200 and attempt.outcome == "delivered"
    [delivery] = receiver.received
    assert delivery.headers["host"] == f"hooks.test:{receiver.port}"
    assert Webhook(secret).verify(delivery.body, delivery.headers) == {"status": "completed"}


def test_network_errors_and_timeouts_are_retried(receiver: Receiver) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    attempt = webhooks.post(f"http://127.0.0.1:{closed}/", b"{}", {}, 2, allow_private=True)
    assert attempt.status is None and attempt.outcome == "retry" and attempt.error
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        attempt = webhooks.post(url, b"{}", {}, 0.3, allow_private=True)
    assert attempt.outcome == "retry" and "timed out" in (attempt.error or "")


def test_a_receiver_that_drips_is_cut_off_at_the_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def drip() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(30):
                    time.sleep(0.1)
                    try:
                        conn.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        return

        thread = threading.Thread(target=drip)
        thread.start()
        started = time.monotonic()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        attempt = webhooks.post(url, b"{}", {}, 0.5, allow_private=True)
        elapsed = time.monotonic() - started
        thread.join()
    assert attempt.outcome == "retry" and "timed out" in (attempt.error or ""), attempt
    assert elapsed < 1.5


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "delivered"), (204, "delivered"), (408, "retry"), (429, "retry"), (500, "retry"),
     (503, "retry"), (301, "failed"), (400, "failed"), (404, "failed"), (410, "failed")],
)
def test_outcome_of_an_answer(status: int, outcome: str) -> None:
    assert webhooks.Attempt(status=status).outcome == outcome


def test_retry_schedule_and_retry_after() -> None:
    ended = 1000.0
    # After n failed attempts, the next is due SCHEDULE[n] seconds after the end.
    assert webhooks.next_attempt(1, ended, ended + 0.1, None, 1.0) == ended + 5
    assert webhooks.next_attempt(2, ended, ended + 6, None, 1.0) == ended + 300
    assert webhooks.next_attempt(9, ended, ended + 72001, None, 1.0) == ended + 86400
    assert webhooks.next_attempt(10, ended, ended + 86401, None, 1.0) is None
    assert webhooks.next_attempt(1, ended, ended, 60, 1.0) == ended + 60
    assert webhooks.next_attempt(9, ended, ended + 86000, 3600, 1.0) is None  # past 24 h
    assert webhooks.next_attempt(2, ended, ended, None, 0.01) == ended + 3
    assert webhooks.parse_retry_after("120", 0) == 120
    assert webhooks.parse_retry_after("1.5", 0) == 1.5
    assert webhooks.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10
    assert webhooks.parse_retry_after("soon", 0) is None
    assert webhooks.parse_retry_after("nan", 0) is None


def test_signature_is_standard_webhooks() -> None:
    secret = new_secret()
    body = b'{"request_id": "abc"}'
    headers = webhooks.headers_for(secret, "msg_x", body, time.time())
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {"request_id": "abc"}
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)


def test_a_refused_address_names_the_flag_that_allows_it(make_client: AppFactory) -> None:
    client = make_client(Fake(Solid()))
    body = {"prompt": "a fox", "settings": {"width": 256, "height": 256, "steps": 10}}
    private = client.post(
        "/image/generate", json={**body, "options": {"webhook_url": "http://10.1.2.3/hook"}}
    )
    assert private.status_code == 400
    assert "--webhook-allow-private" in private.json()["error"]["message"]
    # A URL refused for its form is not one the flag would allow: no hint there.
    scheme = client.post(
        "/image/generate", json={**body, "options": {"webhook_url": "ftp://example.com/h"}}
    )
    assert "--webhook-allow-private" not in scheme.json()["error"]["message"]
