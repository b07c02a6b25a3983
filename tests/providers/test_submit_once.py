"""Paid work is submitted once: a submit is tried again only where the remote surely did
not take it (no connection, 429, 503 with Retry-After); any other failure after it left
fails the job as `submit_uncertain`. Status polls and downloads retry as before."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from fal_double import FalDouble
from remote_fixtures import alice, credits, fal, fal_client

from conftest import AppFactory, generate, wait_done
from server.providers.base import Health, Http, UpstreamError

__all__ = ["fal"]  # the fixture

Failure = Callable[[httpx.Request], httpx.Response]


def raises(kind: type[Exception]) -> Failure:
    def fail(request: httpx.Request) -> httpx.Response:
        raise kind("scripted", request=request)  # type: ignore[call-arg]

    return fail


def answers(status: int, **headers: str) -> Failure:
    return lambda request: httpx.Response(status, json={"detail": "busy"}, headers=headers)


NEVER_TAKEN = {
    "connection refused": raises(httpx.ConnectError),
    "connect timeout": raises(httpx.ConnectTimeout),
    "no pooled connection": raises(httpx.PoolTimeout),
    "429": answers(429, **{"Retry-After": "0"}),
    "503 with Retry-After": answers(503, **{"Retry-After": "0"}),
}
UNCERTAIN = {
    "read timeout": raises(httpx.ReadTimeout),
    "write timeout": raises(httpx.WriteTimeout),
    "connection reset": raises(httpx.ReadError),
    "response cut short": raises(httpx.RemoteProtocolError),
    "502": answers(502),
    "503 without Retry-After": answers(503),
    "504": answers(504),
}


def scripted(failure: Failure) -> tuple[Http, list[str]]:
    """An Http whose first request fails as `failure`, the next ones succeed."""
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return failure(request) if len(calls) == 1 else httpx.Response(200, json={"ok": 1})

    http = Http("fal", Health(), 5.0, 3, 0.001, "http://fal.test")
    http.client = http.fresh = httpx.Client(transport=httpx.MockTransport(handle))
    return http, calls


@pytest.mark.parametrize("failure", NEVER_TAKEN.values(), ids=NEVER_TAKEN.keys())
def test_a_submit_the_remote_never_took_is_tried_again(failure: Failure) -> None:
    http, calls = scripted(failure)
    answer = http.request("POST", "http://fal.test/app", json={}, idempotent=False)
    assert answer.json() == {"ok": 1} and calls == ["POST", "POST"]


@pytest.mark.parametrize("failure", UNCERTAIN.values(), ids=UNCERTAIN.keys())
def test_a_submit_that_may_have_been_taken_is_not_sent_again(failure: Failure) -> None:
    http, calls = scripted(failure)
    with pytest.raises(UpstreamError) as caught:
        http.request("POST", "http://fal.test/app", json={}, idempotent=False, what="submit")
    assert calls == ["POST"]
    assert caught.value.reason == "submit_uncertain"
    assert caught.value.error()["code"] == "PROVIDER_ERROR"


@pytest.mark.parametrize("failure", UNCERTAIN.values(), ids=UNCERTAIN.keys())
def test_status_polls_retry_what_a_submit_does_not(failure: Failure) -> None:
    http, calls = scripted(failure)
    assert http.request("GET", "http://fal.test/status").json() == {"ok": 1}
    assert calls == ["GET", "GET"]


def test_a_gateway_error_to_a_submit_fails_the_job_uncharged(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    headers = alice(client)
    fal.fail_route, fal.fail_next = "submit", [502]
    body = wait_done(client, generate(client, headers=headers, options={"provider": "fal"})[
        "request_id"], headers=headers)  # fmt: skip
    assert body["status"] == "failed" and body["credits_used"] == 0
    assert body["error"]["code"] == "PROVIDER_ERROR"
    assert body["error"]["details"]["reason"] == "submit_uncertain"
    assert body["error"]["details"]["upstream_status"] == 502
    assert fal.attempts == 1
    assert credits(client, headers)["held"] == 0 and credits(client, headers)["balance"] == 10


def test_a_submit_answered_too_late_is_not_sent_again(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal, remote_timeout=0.5)
    fal.submit_delay = 3.0  # taken by the remote, answered after the read timeout
    body = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert body["error"]["details"]["reason"] == "submit_uncertain"
    assert "ReadTimeout" in body["error"]["message"]
    assert fal.attempts == 1 and len(fal.submits) == 1


def test_a_rate_limited_submit_is_tried_again_and_renders_once(
    make_client: AppFactory, fal: FalDouble
) -> None:
    client = fal_client(make_client, fal)
    fal.fail_route, fal.fail_next, fal.fail_headers = "submit", [429, 503], {"Retry-After": "0"}
    body = wait_done(client, generate(client, options={"provider": "fal"})["request_id"])
    assert body["status"] == "completed", body
    assert fal.attempts == 3 and len(fal.submits) == 1


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """A server that reads a request and closes the connection without answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_a_connection_closed_after_the_submit_was_sent_is_uncertain(hangs_up: str) -> None:
    http = Http("fal", Health(), 5.0, 3, 0.001, hangs_up)
    with pytest.raises(UpstreamError) as caught:
        http.request("POST", f"{hangs_up}/app", json={"prompt": "x"}, idempotent=False)
    assert caught.value.reason == "submit_uncertain"
    assert "RemoteProtocolError" in caught.value.message


def test_a_submit_never_rides_a_kept_alive_connection() -> None:
    """A kept-alive connection the remote closed while idle fails a request as if it had
    been sent; a submit is never sent twice, so submits each open their own connection
    (other calls reuse theirs)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            connections.append(1)

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    http = Http("fal", Health(), 5.0, 0, 0.001, base)
    try:
        for _ in range(3):
            http.request("GET", f"{base}/status")
        assert len(connections) == 1  # polls keep their connection
        for _ in range(3):
            http.request("POST", f"{base}/app", json={}, idempotent=False)
        assert len(connections) == 4  # each submit on a new one
    finally:
        http.close()
        server.shutdown()
        server.server_close()
