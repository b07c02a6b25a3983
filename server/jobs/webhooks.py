"""Webhook delivery: a background thread POSTs each ended generation's status object to its
`options.webhook_url`, signed as Standard Webhooks says, and retries on a schedule.

- Signature: `webhook-id` (the same on every attempt), `webhook-timestamp` (unix seconds of
  the attempt), `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
  keyed with the base64 part of the user's `whsec_` secret.
- Outcome of an attempt: 2xx delivered; 408, 429, 5xx, a timeout or a network error are
  retried; any other answer (410 Gone, other 4xx, 3xx: redirects are not followed) and an
  address refused at delivery end it as `failed`.
- Retries: Standard Webhooks' example schedule, counted from the generation's end (times
  `webhook_retry_scale`), never before a `Retry-After`; past 24 h it is `gave_up`.
  Deliveries are rows, so a restarted server resumes the due ones.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from server.net import ssrf
from server.store import Store

log = logging.getLogger("darkroom.webhooks")

# Seconds after the generation ended: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
POLL_SECONDS = 0.2
SENDERS = 4
MAX_RETRY_AFTER = 86400.0
USER_AGENT = "Darkroom-Webhooks/1"

# The status object of a generation row, its links under a base URL.
RenderStatus = Callable[[dict[str, Any], str], dict[str, Any]]


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def headers_for(secret: str, webhook_id: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = int(now)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: an HTTP status, or an error (and whether to try again)."""

    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False

    @property
    def outcome(self) -> str:
        if self.refused:
            return "failed"
        if self.status is None:
            return "retry"
        if 200 <= self.status < 300:
            return "delivered"
        if self.status in (408, 429) or self.status >= 500:
            return "retry"
        return "failed"


def parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def next_attempt(
    attempts: int, ended_at: float, now: float, retry_after: float | None, scale: float
) -> float | None:
    """When to try again after `attempts` failed ones (None: give up)."""
    if attempts >= len(SCHEDULE):
        return None
    due = ended_at + SCHEDULE[attempts] * scale
    if retry_after is not None:
        due = max(due, now + retry_after)
    if due > ended_at + SCHEDULE[-1] * scale:
        return None
    return max(due, now)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to an address already checked, whatever the name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        # Certificate and SNI for the URL's host name, not the address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(url: str, body: bytes, headers: dict[str, str], timeout: float,
         allow_private: bool) -> Attempt:
    """POST `body` to `url`, checking (again) where its host resolves and connecting there."""
    problem = ssrf.url_problem(url)
    if problem:
        return Attempt(error=problem, refused=True)
    scheme, host, port, path = ssrf.target(url)
    try:
        address = ssrf.resolve(host, port, allow_private)[0]
    except ssrf.WebhookRefused as exc:
        return Attempt(error=f"refused: {exc}", refused=True)
    except (OSError, UnicodeError) as exc:
        return Attempt(error=f"{host} does not resolve: {exc}")
    kind = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    connection = kind(host, port, address, timeout)
    # The socket timeout bounds each read; this bounds the whole attempt (a receiver that
    # answers a byte at a time is cut off too).
    cut = threading.Event()
    watchdog = threading.Timer(timeout, _cut_off, (connection, cut))
    watchdog.start()
    timed_out = Attempt(error=f"timed out after {timeout:g}s")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(65536)
        if cut.is_set():  # what was read ends where the connection was cut
            return timed_out
        retry_after = parse_retry_after(response.getheader("Retry-After"), time.time())
        return Attempt(status=response.status, retry_after=retry_after)
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError) or cut.is_set():
            return timed_out
        return Attempt(error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        watchdog.cancel()
        connection.close()


def _cut_off(connection: http.client.HTTPConnection, cut: threading.Event) -> None:
    cut.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class WebhookSender:
    """The delivery thread: every POLL_SECONDS it hands due deliveries to a few senders."""

    def __init__(
        self,
        store: Store,
        render: RenderStatus,
        *,
        allow_private: bool,
        timeout: float = 10.0,
        retry_scale: float = 1.0,
    ) -> None:
        self.store = store
        self.render = render
        self.allow_private = allow_private
        self.timeout = timeout
        self.retry_scale = retry_scale
        self._stop = threading.Event()
        self._busy: set[int] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="darkroom-webhook")
        self._thread = threading.Thread(target=self._run, name="darkroom-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop looking for due deliveries; wait for those being sent (each within its
        timeout); the rest stay pending for the next start."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                with self._lock:
                    busy = list(self._busy)
                    due = self.store.due_webhooks(time.time(), busy, SENDERS)
                    self._busy.update(row["id"] for row in due)
                for row in due:
                    self._pool.submit(self._deliver, row)
            except Exception:
                log.exception("webhooks: could not read due deliveries")

    def _deliver(self, row: dict[str, Any]) -> None:
        try:
            self.deliver(row)
        except Exception:
            log.exception("webhook %s: delivery failed", row["webhook_id"])
        finally:
            with self._lock:
                self._busy.discard(row["id"])

    def deliver(self, row: dict[str, Any]) -> str:
        """One attempt at this delivery; records it and returns its new state."""
        generation = self.store.generation(row["request_id"])
        if generation is None:
            self.store.record_webhook_attempt(row["id"], "failed", None, "no generation", None)
            return "failed"
        body = json.dumps(self.render(generation, row["base_url"])).encode()
        secret = self.store.webhook_secret(row["user_id"])
        now = time.time()
        headers = headers_for(secret, row["webhook_id"], body, now)
        attempt = post(row["url"], body, headers, self.timeout, self.allow_private)
        outcome, next_at = attempt.outcome, None
        if outcome == "retry":
            next_at = next_attempt(
                row["attempts"] + 1, row["ended_at"], time.time(), attempt.retry_after,
                self.retry_scale,
            )
            outcome = "pending" if next_at is not None else "gave_up"
        error = attempt.error or (None if outcome == "delivered" else f"HTTP {attempt.status}")
        self.store.record_webhook_attempt(row["id"], outcome, attempt.status, error, next_at)
        log.info(
            "webhook %s for %s: %s (attempt %d%s)",
            row["webhook_id"], row["request_id"], outcome, row["attempts"] + 1,
            f", {error}" if error else "",
            extra={"request_id": row["request_id"], "webhook": outcome},
        )
        return outcome
