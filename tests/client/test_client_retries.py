"""darkroom_client's submit retries under one Idempotency-Key, and wait()'s deadline when
the event stream sends only keep-alives (Client, AsyncClient, the CLI's --timeout)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from client_fixtures import CLIENT_DIR, SMALL, LiveServer, live_server
from darkroom_client import AsyncClient, Client, Timeout, TransportError, ValidationError

PENDING = {"request_id": "r1", "status": "pending", "credits_used": 0, "generation_id": 1}


# -- against a real server: the answer is lost, the retry is not a second generation ----


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("client-retries")
    yield from live_server(root, models_dir, {"alice": ("--credits", "1")})


class DropsFirstAnswer(httpx.HTTPTransport):
    """A network that loses the answer to the first submit after the server got it."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path == "/image/generate":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset after the request was sent")
        return response


def test_a_lost_answer_is_retried_with_the_same_key_and_charged_once(
    server: LiveServer,
) -> None:
    network = DropsFirstAnswer()
    http = httpx.Client(transport=network)
    with Client(server.url, server.tokens["alice"], http=http) as client:
        before = client.account()["credits"]["balance"]
        generation = client.generate("a fox", **SMALL, seed=3)
        assert generation.status == "completed"
        assert len(network.keys) == 2 and network.keys[0] == network.keys[1]
        assert network.keys[0] and len(network.keys[0]) == 36  # a UUID
        history = client.history()["items"]
        assert [g.request_id for g in history] == [generation.request_id]
        credits = client.account()["credits"]
        assert credits["balance"] == pytest.approx(before - generation.raw["credits_used"])
        assert credits["held"] == 0
        # The next call is a new request: a new key.
        client.submit("a fox", **SMALL, seed=3)
        assert len(network.keys) == 3 and network.keys[2] != network.keys[0]


# -- scripted answers --------------------------------------------------------------------


def scripted(answers: list[httpx.Response | Exception], seen: list[httpx.Request]):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler)


def failed(status: int, code: str, headers: dict | None = None) -> httpx.Response:
    body = {"status": "failed", "error": {"code": code, "message": "no", "details": {}}}
    return httpx.Response(status, json=body, headers=headers)


def test_network_errors_and_gateway_answers_are_retried_with_one_key() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        httpx.Response(502, text="bad gateway"),
        failed(503, "SERVICE_UNAVAILABLE", {"Retry-After": "0.3"}),
        httpx.Response(504, text="gateway timeout"),
        failed(409, "CONFLICT", {"Retry-After": "0"}),
        httpx.Response(202, json=PENDING),
    ]
    http = httpx.Client(transport=scripted(answers, seen))
    with Client("http://darkroom.test", http=http, max_retries=5, max_retry_wait=1) as client:
        assert client.submit("a fox").request_id == "r1"
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 6 and len(keys) == 1
    assert client.retries_waited == 5


def test_retry_after_is_honoured() -> None:
    seen: list[httpx.Request] = []
    stamps: list[float] = []
    answers: list[httpx.Response | Exception] = [
        failed(503, "SERVICE_UNAVAILABLE", {"Retry-After": "1"}),
        httpx.Response(202, json=PENDING),
    ]
    transport = scripted(answers, seen)

    def timed(request: httpx.Request) -> httpx.Response:
        stamps.append(time.monotonic())
        return transport.handle_request(request)

    http = httpx.Client(transport=httpx.MockTransport(timed))
    with Client("http://darkroom.test", http=http) as client:
        client.submit("a fox")
    assert stamps[1] - stamps[0] >= 1.0


def test_a_400_is_not_retried_and_retries_are_bounded() -> None:
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=scripted([failed(400, "VALIDATION_ERROR")], seen))
    with Client("http://darkroom.test", http=http) as client, pytest.raises(ValidationError):
        client.submit("a fox")
    assert len(seen) == 1
    seen.clear()
    down: list[httpx.Response | Exception] = [httpx.ConnectError("refused") for _ in range(3)]
    http = httpx.Client(transport=scripted(down, seen))
    client = Client("http://darkroom.test", http=http, max_retries=2, max_retry_wait=0)
    with client, pytest.raises(TransportError, match="refused"):
        client.submit("a fox")
    assert len(seen) == 3


def test_a_read_is_not_retried_without_a_key() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [httpx.ConnectError("refused")]
    http = httpx.Client(transport=scripted(answers, seen))
    with Client("http://darkroom.test", http=http) as client, pytest.raises(TransportError):
        client.account()
    assert len(seen) == 1 and "Idempotency-Key" not in seen[0].headers


def test_async_client_retries_with_one_key() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.ReadError("reset"),
        httpx.Response(202, json=PENDING),
    ]

    async def main() -> str:
        http = httpx.AsyncClient(transport=scripted(answers, seen))
        async with AsyncClient("http://darkroom.test", http=http) as client:
            return (await client.submit("a fox")).request_id

    assert asyncio.run(main()) == "r1"
    assert len(seen) == 2
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]


# -- wait()'s deadline against a stream that only keeps alive ----------------------------


class QuietServer(ThreadingHTTPServer):
    """Accepts a generation that never progresses; its event stream sends only keep-alive
    comments (or, with `silent`, nothing at all) for a minute."""

    daemon_threads = True
    silent = False


class QuietHandler(BaseHTTPRequestHandler):
    server: QuietServer

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._json(202, PENDING)

    def do_GET(self) -> None:
        if self.path == "/account":
            self._json(200, {"user": "x", "limits": {"concurrent_generations": 1}})
        elif self.path.endswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                for _ in range(600):
                    if not self.server.silent:
                        self.wfile.write(b": keep-alive\n\n")
                        self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass  # the client went away
        else:
            self._json(200, PENDING)


@pytest.fixture(params=["keep-alives", "silent"])
def quiet(request: pytest.FixtureRequest) -> Iterator[str]:
    httpd = QuietServer(("127.0.0.1", 0), QuietHandler)
    httpd.silent = request.param == "silent"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# The stream would last 60 s; the deadline is 1 s: a generous bound tells them apart.
DEADLINE, LATE = 1.0, 15.0


def test_client_wait_keeps_its_deadline(quiet: str) -> None:
    with Client(quiet) as client:
        started = time.monotonic()
        with pytest.raises(Timeout) as timed_out:
            client.wait("r1", timeout=DEADLINE)
        took = time.monotonic() - started
    assert DEADLINE <= took < LATE
    assert timed_out.value.details == {"client_timeout": DEADLINE}


def test_async_client_wait_keeps_its_deadline(quiet: str) -> None:
    async def main() -> float:
        async with AsyncClient(quiet) as client:
            started = time.monotonic()
            with pytest.raises(Timeout):
                await client.wait("r1", timeout=DEADLINE)
            return time.monotonic() - started

    assert DEADLINE <= asyncio.run(main()) < LATE


def test_cli_timeout_keeps_its_deadline(quiet: str, tmp_path: Path) -> None:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "darkroom_client.cli", "generate", "a fox", "--no-progress",
         "--url", quiet, "--out", str(tmp_path), "--timeout", str(DEADLINE)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(CLIENT_DIR), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    took = time.monotonic() - started
    assert run.returncode == 1, run.stderr
    assert "TIMEOUT" in run.stderr
    assert took < LATE + 10  # the interpreter's start-up on a loaded machine
