"""What the sync and async clients share: reading answers, retrying, waiting (request
bodies: bodies.py). Each operation is a generator that yields effects (an HTTP call, a sleep, the
next Server-Sent Event) and returns its result; `Client` performs the effects with
httpx.Client and time.sleep, `AsyncClient` with httpx.AsyncClient and asyncio.sleep, so
the logic is written once."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from darkroom_client.errors import (
    DarkroomError,
    Timeout,
    TransportError,
    error_from,
)
from darkroom_client.models import Generation

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "darkroom-client/0.1"
STREAM_READ_TIMEOUT = 60.0  # the server sends a keep-alive comment every 15 s
IDEMPOTENCY_KEY = "Idempotency-Key"
RETRY_BASE = 0.5  # seconds before the first retry without Retry-After; doubles each time
# Answers after which a submit carrying an Idempotency-Key is sent again with that key:
# the server may or may not have admitted it (gateways, a restart), or it is busy.
UNSURE = (502, 503, 504)


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class OpenEvents:
    """Open an SSE stream; the runner answers True if it is one, else False. No read may
    wait past `deadline` (time.monotonic()), so a silent stream cannot outlast it."""

    url: str
    deadline: float | None = None

    def read_timeout(self) -> float:
        if self.deadline is None:
            return STREAM_READ_TIMEOUT
        return max(0.01, min(STREAM_READ_TIMEOUT, self.deadline - time.monotonic()))


# NextEvent's answer when the deadline passed with only keep-alives (comments) read.
QUIET = "quiet"


@dataclass(frozen=True)
class NextEvent:
    """The next event's data as a dict, None when the stream ended, or QUIET once
    `deadline` has passed; the runner feeds it the stream's lines one by one."""

    deadline: float | None = None

    def feed(self, decoder: SSEDecoder, line: str) -> dict[str, Any] | str | None:
        """An event, QUIET, or None to read the next line."""
        event = decoder.feed(line)
        if event is None and self.deadline is not None and time.monotonic() >= self.deadline:
            return QUIET
        return event


@dataclass(frozen=True)
class CloseEvents:
    pass


Op = Generator[Any, Any, Any]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as the operations see it (the runners fill it in)."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class SSEDecoder:
    """Server-Sent Events, line by line (the WHATWG rules we need: event, data, id)."""

    def __init__(self) -> None:
        self.data: list[str] = []
        self.event = "message"
        self.last_id: str | None = None

    def feed(self, line: str) -> dict[str, Any] | None:
        """One line without its newline; the event's decoded data once it is complete."""
        if line == "":
            if not self.data:
                self.event = "message"
                return None
            data, event = "\n".join(self.data), self.event
            self.data, self.event = [], "message"
            if event not in ("status", "message"):
                return None
            try:
                parsed = json.loads(data)
            except ValueError:
                return None
            return parsed if isinstance(parsed, dict) else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.last_id = value
        return None


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Core:
    """Configuration and the operations; no I/O of its own."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        max_retry_wait: float = 120.0,
        poll_interval: float = 1.0,
        use_events: bool = True,
        max_concurrency: int | None = None,
        headers: dict[str, str] | None = None,
        wait_timeout: float | None = None,
    ) -> None:
        self.url = (url or os.environ.get("DARKROOM_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("DARKROOM_TOKEN") or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.poll_interval = poll_interval
        self.use_events = use_events
        self.max_concurrency = max_concurrency
        self.wait_timeout = wait_timeout  # wait()'s deadline when it is given none
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if self.token:
            self.headers["Authorization"] = f"Bearer {self.token}"
        self.retries_waited = 0  # how many 429/503 answers were waited out (for tests, logs)

    # -- building blocks -------------------------------------------------------------

    def absolute(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.url}{path}"

    def error(self, answer: Answer) -> DarkroomError:
        try:
            body = answer.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            error = {
                "code": "TRANSPORT_ERROR",
                "message": f"HTTP {answer.status_code}: {answer.content[:200]!r}",
            }
        return error_from(error, answer.status_code, headers=answer.headers)

    def retry_delay(self, answer: Answer, attempt: int, keyed: bool = False) -> float | None:
        """Seconds to wait before trying again, or None to give up and raise. Any call
        waits out a 429 or 503 that says Retry-After; a submit with an Idempotency-Key
        (`keyed`) also retries 502, 503 and 504 and the 409 of its own earlier attempt
        still in progress, with backoff when no Retry-After is given."""
        if attempt >= self.max_retries:
            return None
        delay = retry_after_seconds(answer.headers)
        status = answer.status_code
        if keyed and (status in UNSURE or status == 409):
            delay = RETRY_BASE * 2**attempt if delay is None else delay
        elif status not in (429, 503) or delay is None:
            return None
        return min(delay, self.max_retry_wait)

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Op:
        """One call, with 429/503 + Retry-After waited out; the answer, or the error raised.
        A call with an Idempotency-Key header is safe to repeat, so network errors and
        gateway answers are retried too (bounded by max_retries, backing off)."""
        keyed = bool(headers and IDEMPOTENCY_KEY in headers)
        attempt = 0
        if params:
            params = {k: _query_value(v) for k, v in params.items() if v is not None}
        while True:
            call = Call(method, self.absolute(path), params or None, body, headers)
            try:
                answer: Answer = yield call
            except TransportError:
                if not keyed or attempt >= self.max_retries:
                    raise
                delay: float | None = min(RETRY_BASE * 2**attempt, self.max_retry_wait)
            else:
                if answer.status_code < 400:
                    return answer
                delay = self.retry_delay(answer, attempt, keyed)
                if delay is None:
                    raise self.error(answer)
            attempt += 1
            self.retries_waited += 1
            yield Sleep(delay)

    def json_call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Op:
        answer = yield from self.request(method, path, params, body, headers)
        try:
            return answer.json()
        except ValueError:
            raise TransportError(f"{path} answered something that is not JSON") from None

    # -- operations ------------------------------------------------------------------

    def submit_op(self, body: dict[str, Any], make: Callable[[dict], Generation]) -> Op:
        """Submit under a fresh Idempotency-Key, so every retry is the same request: the
        server admits (and charges) it once however many attempts reach it."""
        headers = {IDEMPOTENCY_KEY: str(uuid.uuid4())}
        data = yield from self.json_call("POST", "/image/generate", body=body, headers=headers)
        return make(data)

    def status_op(self, request_id: str, make: Callable[[dict], Generation]) -> Op:
        data = yield from self.json_call("GET", f"/generations/{request_id}/status")
        return make(data)

    def wait_op(
        self,
        start: Generation | str,
        make: Callable[[dict], Generation],
        on_progress: Callable[[Generation], Any] | None,
        timeout: float | None,
    ) -> Op:
        timeout = self.wait_timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        current = start if isinstance(start, Generation) else None
        request_id = current.request_id if current else str(start)
        if current is not None and current.done:
            return finish(current)
        if self.use_events:
            url = self.absolute(f"/generations/{request_id}/events")
            opened = yield OpenEvents(url, deadline)
            if opened:
                ended: Generation | None = None
                try:
                    while ended is None:
                        data = yield NextEvent(deadline)
                        if data is None:
                            break
                        if data == QUIET:  # only keep-alives until the deadline
                            raise _timeout(request_id, timeout)
                        current = make(data)
                        if on_progress:
                            on_progress(current)
                        if current.done:
                            ended = current
                        elif deadline is not None and time.monotonic() > deadline:
                            raise _timeout(request_id, timeout)
                except TransportError:
                    pass  # the stream broke: poll instead
                # (the runner also closes the stream when an exception ends the operation)
                yield CloseEvents()
                if ended is not None:
                    return finish(ended)
        while True:
            current = yield from self.status_op(request_id, make)
            if on_progress:
                on_progress(current)
            if current.done:
                return finish(current)
            if deadline is not None and time.monotonic() > deadline:
                raise _timeout(request_id, timeout)
            yield Sleep(self.poll_interval)

    def fetch_op(self, url: str) -> Op:
        answer = yield from self.request("GET", url)
        return answer.content

    def loras_params(self, **filters: Any) -> dict[str, Any]:
        return filters

    def history_params(
        self,
        page: int = 1,
        per_page: int = 20,
        date_from: str | None = None,
        has_seed: bool | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "page": page,
            "per_page": per_page,
            "date_from": date_from,
            "has_seed": has_seed,
            **extra,
        }


def _query_value(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _timeout(request_id: str, timeout: float | None) -> Timeout:
    return Timeout(
        f"gave up waiting for {request_id} after {timeout} s (it may still finish)",
        request_id=request_id,
        details={"client_timeout": timeout},
    )


def finish(generation: Generation) -> Generation:
    """The generation, or its error raised when it failed."""
    if generation.status == "failed":
        error = generation.error
        assert error is not None
        raise error
    return generation


def concurrency_from(account: dict[str, Any], default: int = 1) -> int:
    limits = account.get("limits") if isinstance(account, dict) else None
    value = (limits or {}).get("concurrent_generations")
    return int(value) if isinstance(value, int) and value > 0 else default
