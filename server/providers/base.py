"""What every remote provider shares: the job it is handed, its result, its errors, an HTTP
client that retries what is worth retrying, and the health it reports."""

from __future__ import annotations

import base64
import contextlib
import io
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from pipelines.spec import HiresFix, ImageInput
from server.contract import ApiError, ErrorCode, ImageGenerationRequest, error_object
from server.progress import Progress

# Worth another try of a read (a status poll, a download): the request was not answered.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
MAX_BACKOFF_SECONDS = 10.0
# A submit (paid work) is tried again only where the remote surely did not take it: the
# connection was never made (refused, connect timeout, no pooled connection), or the
# remote said so (429, 503 with Retry-After). Anything else after the request left (a
# read timeout, 502/503/504 from a gateway, a reset or a response cut short) may have
# started a render there: the job fails as `submit_uncertain` instead of paying twice.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def submit_retryable(response: httpx.Response) -> bool:
    """Whether a submit's answer says the remote did not take the request."""
    if response.status_code == 429:
        return True
    return response.status_code == 503 and "retry-after" in response.headers


def redact_url(url: str) -> str:
    """A URL fit for /health and logs: no user-info, no query or fragment (tokens)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def same_origin(url: httpx.URL, origin: httpx.URL) -> bool:
    ports = {"http": 80, "https": 443}
    return (url.scheme, url.host, url.port or ports.get(url.scheme)) == (
        origin.scheme, origin.host, origin.port or ports.get(origin.scheme),
    )  # fmt: skip


class OriginAuth(httpx.Auth):
    """Credentials sent to the provider's own origin only: a result or image URL it hands
    out on another host (a CDN, a bucket) is fetched without them."""

    def __init__(self, origin: str, headers: dict[str, str]) -> None:
        self.origin = httpx.URL(origin)
        self.headers = headers

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        if same_origin(request.url, self.origin):
            request.headers.update(self.headers)
        yield request


def basic_auth(credentials: str) -> dict[str, str]:
    """`user:password` as an HTTP Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


class Stopped(Exception):
    """The job was stopped here (cancelled, timed out, shutting down)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamError(Exception):
    """The remote refused, failed or could not be reached: the job fails with
    PROVIDER_ERROR and `details: {provider, upstream_status, upstream_detail, reason}`."""

    def __init__(
        self,
        provider: str,
        message: str,
        status: int | None = None,
        detail: Any = None,
        reason: str = "upstream_error",
        code: str = ErrorCode.PROVIDER_ERROR,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.message = message
        self.status = status
        self.detail = detail
        self.reason = reason
        self.code = code

    def error(self) -> dict[str, Any]:
        return error_object(
            self.code,
            self.message,
            {
                "provider": self.provider,
                "upstream_status": self.status,
                "upstream_detail": self.detail,
                "reason": self.reason,
            },
        )

    @property
    def unreachable(self) -> bool:
        return self.reason == "unreachable" or (self.status or 0) >= 500

    def summary(self) -> str:
        """For /health: status code and a short reason of our own words, never the
        upstream's body or a URL (its query may hold a token)."""
        reason = re.sub(r"[^A-Za-z0-9_.-]", "", self.reason)[:40] or "upstream_error"
        if self.status is None:
            return self.message if self.reason == "unreachable" else f"{self.provider}: {reason}"
        return f"{self.provider} answered HTTP {self.status} ({reason})"


@dataclass
class RemoteProgress(Progress):
    """A remote job as the status poll sees it: the remote's queue place, its steps."""

    provider: str = ""
    queue_position: int | None = None


@dataclass
class RemoteResult:
    images: list[Image.Image]
    seeds: list[int]
    model: str
    model_hash: str | None = None


@dataclass
class RemoteJob:
    """What a provider's `run` gets: the request as admitted (seed fixed), the LoRA rows it
    names, the stored handle of an earlier submit (None: submit now), and callbacks.
    `image`, `hires`: an image-to-image's parts, its inputs as vault paths."""

    generation_id: int
    request: ImageGenerationRequest
    seed: int
    loras: list[dict[str, Any]]  # catalog rows (meta parsed), one per request.loras entry
    handle: dict[str, Any] | None
    progress: RemoteProgress
    deadline: float
    save: Callable[[dict[str, Any]], None]
    started: Callable[[], None]
    poll_seconds: float = 1.0
    image: ImageInput | None = None
    hires: HiresFix | None = None

    def check(self) -> None:
        """Raise Stopped when the job was stopped or ran past its deadline."""
        if time.monotonic() > self.deadline:
            self.progress.request_stop("timeout")
        if self.progress.stop.is_set():
            raise Stopped(self.progress.stop_reason or "cancelled")

    def wait(self, seconds: float | None = None) -> None:
        self.progress.stop.wait(self.poll_seconds if seconds is None else seconds)
        self.check()

    def queued(self, position: int | None) -> None:
        self.progress.queue_position = position

    def processing(self, step: int = 0, total: int = 0) -> None:
        if self.progress.queue_position is not None or not self.progress.total_steps:
            self.started()
        self.progress.queue_position = None
        self.progress.step = step
        self.progress.total_steps = total or self.request.settings.steps


@dataclass
class Health:
    """What /health says of a provider: last success, last error, jobs in flight."""

    reachable: bool | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self) -> None:
        with self.lock:
            self.reachable, self.last_ok_at = True, time.time()

    def failed(self, exc: UpstreamError) -> None:
        with self.lock:
            if exc.unreachable:
                self.reachable = False
            self.last_error, self.last_error_at = exc.summary(), time.time()

    def view(self) -> dict[str, Any]:
        return {
            "reachable": self.reachable,
            "last_ok_at": self.last_ok_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


class Http:
    """httpx with bounded retries: 408/429/502/503/504 and network errors, backoff doubling
    from `base` seconds (with jitter, honouring Retry-After up to the cap). A request that
    is not idempotent (a submit) is retried only where the remote surely did not take it
    (NEVER_SENT, `submit_retryable`); any other failure after it left raises UpstreamError
    with reason `submit_uncertain` at once. Any other 4xx or 5xx raises UpstreamError at
    once. `auth` goes to the provider's own origin only (OriginAuth)."""

    def __init__(
        self,
        provider: str,
        health: Health,
        timeout: float,
        retries: int,
        base: float,
        origin: str,
        credentials: dict[str, str] | None = None,
    ) -> None:
        """`credentials`: headers sent with every request to `origin` (the provider's
        configured URL), and to no other host."""
        self.provider = provider
        self.health = health
        self.retries = retries
        self.base = base
        auth = OriginAuth(origin, credentials) if credentials else None
        self.client = httpx.Client(timeout=timeout, auth=auth)
        # Submits each go over a new connection: on a kept-alive one the remote may have
        # closed while idle, the request fails as if it had been sent, and a submit is
        # never sent twice, so a job would fail `submit_uncertain` that never reached it.
        self.fresh = httpx.Client(
            timeout=timeout, auth=auth, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        idempotent: bool = True,
        timeout: float | None = None,
        what: str = "request",
    ) -> httpx.Response:
        last: UpstreamError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt, last))
            try:
                kwargs: dict[str, Any] = {"json": json} if json is not None else {}
                if timeout is not None:
                    kwargs["timeout"] = timeout
                client = self.client if idempotent else self.fresh
                response = client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                last = UpstreamError(
                    self.provider,
                    f"{self.provider} could not be reached ({what}): {type(exc).__name__}",
                    detail=str(exc) or type(exc).__name__,
                    reason="unreachable",
                )
                if idempotent or isinstance(exc, NEVER_SENT):
                    continue
                raise uncertain(last, f"{type(exc).__name__} after the {what} was sent") from exc
            if response.status_code in RETRY_STATUSES:
                last = self._error(response, what)
                last.retry_after = response.headers.get("retry-after")  # type: ignore[attr-defined]
                if idempotent or submit_retryable(response):
                    continue
                raise uncertain(last, f"HTTP {response.status_code} to the {what}")
            if response.status_code >= 400:
                raise self._error(response, what)
            return response
        assert last is not None
        raise last

    def _backoff(self, attempt: int, last: UpstreamError | None) -> float:
        delay = min(MAX_BACKOFF_SECONDS, self.base * 2 ** (attempt - 1))
        hinted = getattr(last, "retry_after", None)
        if hinted:
            with contextlib.suppress(ValueError):
                delay = min(MAX_BACKOFF_SECONDS, max(delay, float(hinted)))
        return delay * (0.5 + random.random() / 2)

    def _error(self, response: httpx.Response, what: str) -> UpstreamError:
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text[:500]
        return UpstreamError(
            self.provider,
            f"{self.provider} answered {response.status_code} to the {what}",
            status=response.status_code,
            detail=detail,
        )

    def image(self, url: str) -> Image.Image:
        """Download and decode one result image (retried like any GET)."""
        try:
            response = self.request("GET", url, what="image download")
            image = Image.open(io.BytesIO(response.content))
            image.load()
        except UpstreamError as exc:
            exc.reason, exc.message = "download_failed", f"{exc.message} ({url})"
            raise
        except OSError as exc:
            raise UpstreamError(
                self.provider, f"{self.provider} sent an unreadable image", detail=str(exc),
                reason="download_failed",
            ) from exc
        return image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image

    def close(self) -> None:
        self.client.close()
        self.fresh.close()


def uncertain(exc: UpstreamError, how: str) -> UpstreamError:
    """A submit that may have reached the remote: not tried again (it could pay twice)."""
    exc.reason = "submit_uncertain"
    exc.message = (
        f"{exc.provider} may or may not have taken the request ({how}); it was not sent"
        " again, so as not to render and charge twice"
    )
    return exc


class RemoteProvider:
    """A remote place to render. Subclasses: fal.FalProvider, rundiffusion.RunDiffusion."""

    name = ""
    serial = False  # one job at a time (AUTOMATIC1111 renders one call at a time anyway)

    def __init__(self) -> None:
        self.health = Health()

    def describe(self) -> dict[str, Any]:
        return {"configured": True, **self.health.view()}

    def check(self, request: ImageGenerationRequest, loras: list[dict[str, Any]]) -> None:
        """At submit: raise ApiError if this provider cannot render the request."""

    def refusal(
        self, request: ImageGenerationRequest, image: ImageInput | None, hires: HiresFix | None
    ) -> str | None:
        """What of an image-to-image job (image_jobs.image_parts) this provider cannot
        render, in a few words; None when it can (or for a text-to-image)."""
        return "image-to-image jobs" if image is not None or hires is not None else None

    def prefetch(self, request: ImageGenerationRequest) -> None:
        """Before submit, off the event loop: fetch what `check` needs from the remote."""

    def run(self, job: RemoteJob) -> RemoteResult:
        raise NotImplementedError

    def cancel(self, generation_id: int, handle: dict[str, Any] | None) -> None:
        """Pass a cancel (or timeout) of this job on to the remote (best effort), touching
        nothing else that renders there."""

    def close(self) -> None:
        pass


def unusable_loras(
    provider: str, loras: list[dict[str, Any]], missing: list[int], reason: str
) -> ApiError:
    """INVALID_LORA for the LoRAs a remote provider cannot use, in the shape the local
    catalog's refusals have."""
    return ApiError(
        ErrorCode.INVALID_LORA,
        "; ".join(f"LoRA model with ID {i} cannot be used: {reason}" for i in missing),
        {
            "invalid_ids": missing,
            "valid_ids": [row["id"] for row in loras if row["id"] not in missing],
            "incompatible": [{"id": i, "reason": reason} for i in missing],
            "provider": provider,
        },
    )
