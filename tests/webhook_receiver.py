"""A webhook receiver on loopback for the tests: records every POST and answers what it is
told (a status and headers per request, in order; 200 once the list runs out)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: deque[tuple[int, dict[str, str]]] = deque()
        self.default: tuple[int, dict[str, str]] = (200, {})
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.changed:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body,
                                 time.time())
                    )
                    status, headers = (
                        receiver.answers.popleft() if receiver.answers else receiver.default
                    )
                    receiver.changed.notify_all()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook?x=1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        for answer in answers:
            self.answers.append(answer if isinstance(answer, tuple) else (answer, {}))

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} deliveries, expected {count}")
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
