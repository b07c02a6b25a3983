"""`Client`, the blocking client (its async twin is async_client.AsyncClient). Both run
the operations of `_core` (which hold all the logic) with their own httpx client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from darkroom_client._core import (
    Answer,
    Call,
    CloseEvents,
    Core,
    NextEvent,
    Op,
    OpenEvents,
    Sleep,
    SSEDecoder,
    concurrency_from,
)
from darkroom_client.errors import TransportError
from darkroom_client.images import build_body, build_edit
from darkroom_client.models import Generation, parse_generation

ProgressCallback = Callable[[Generation], Any]


class _Shared(Core):
    """What both clients add on top of the operations: headers and concurrency counters."""

    def _setup(self) -> None:
        self.concurrency: int | None = self.max_concurrency
        self.active = 0  # generations this client is running through generate()
        self.peak_active = 0
        self._count_lock = threading.Lock()

    def _headers_for(self, url: str) -> dict[str, str]:
        headers = dict(self.headers)
        if not url.startswith(self.url + "/"):
            headers.pop("Authorization", None)  # never hand the token to another host
        return headers

    def _enter(self) -> None:
        with self._count_lock:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)

    def _leave(self) -> None:
        with self._count_lock:
            self.active -= 1

    @staticmethod
    def _answer(response: httpx.Response) -> Answer:
        return Answer(response.status_code, dict(response.headers), response.content)

    @staticmethod
    def _is_event_stream(response: httpx.Response) -> bool:
        content_type = response.headers.get("content-type", "")
        return response.status_code == 200 and content_type.startswith("text/event-stream")


class Client(_Shared):
    """A blocking client. `Client()` reads DARKROOM_URL and DARKROOM_TOKEN.

    Keyword options: timeout (s per request), max_retries and max_retry_wait (for 429 and
    503 with Retry-After; a submit, which carries an Idempotency-Key, also retries network
    errors and 502/503/504), wait_timeout (s, the deadline of wait() and generate() when
    they are given none), poll_interval (s, when the server offers no event stream),
    use_events, max_concurrency (default: the account's concurrent_generations),
    headers, http (an httpx.Client to use instead of the client's own)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        http: httpx.Client | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, token, **options)
        self._setup()
        self._http = http or httpx.Client(timeout=self.timeout, follow_redirects=True)
        self._slots: threading.BoundedSemaphore | None = None
        self._slots_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the effects -----------------------------------------------------------------

    def _run(self, op: Op) -> Any:
        stream: Any = None
        lines: Any = None
        decoder = SSEDecoder()
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                try:
                    if isinstance(effect, Call):
                        response = self._http.request(
                            effect.method,
                            effect.url,
                            params=effect.params,
                            json=effect.json,
                            headers={**self._headers_for(effect.url), **(effect.headers or {})},
                        )
                        value = self._answer(response)
                    elif isinstance(effect, Sleep):
                        time.sleep(effect.seconds)
                    elif isinstance(effect, OpenEvents):
                        headers = {**self._headers_for(effect.url), "Accept": "text/event-stream"}
                        timeout = httpx.Timeout(self.timeout, read=effect.read_timeout())
                        stream = self._http.stream(
                            "GET", effect.url, headers=headers, timeout=timeout
                        )
                        response = stream.__enter__()
                        value = self._is_event_stream(response)
                        if value:
                            lines, decoder = response.iter_lines(), SSEDecoder()
                        else:
                            stream.__exit__(None, None, None)
                            stream = None
                    elif isinstance(effect, NextEvent):
                        for line in lines:
                            value = effect.feed(decoder, line)
                            if value is not None:
                                break
                    elif isinstance(effect, CloseEvents) and stream is not None:
                        stream.__exit__(None, None, None)
                        stream = None
                except httpx.TransportError as exc:
                    error = TransportError(f"{type(exc).__name__}: {exc}")
        finally:
            if stream is not None:
                stream.__exit__(None, None, None)
            op.close()

    def _make(self, data: dict[str, Any]) -> Generation:
        return parse_generation(data, fetch=lambda url: self._run(self.fetch_op(url)))

    def _slots_for_generate(self) -> threading.BoundedSemaphore:
        with self._slots_lock:
            if self._slots is None:
                if self.concurrency is None:
                    self.concurrency = concurrency_from(self.account())
                self._slots = threading.BoundedSemaphore(self.concurrency)
            return self._slots

    # -- the API ---------------------------------------------------------------------

    def submit(
        self, prompt: str | None = None, *, request: dict[str, Any] | None = None, **settings: Any
    ) -> Generation:
        """Queue a generation (202) and return it, pending."""
        return self._run(self.submit_op(build_body(prompt, request, **settings), self._make))

    def status(self, request_id: str) -> Generation:
        return self._run(self.status_op(request_id, self._make))

    def wait(
        self,
        generation: Generation | str,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """Follow a generation to its end (events, else polling); raise its error if it
        failed (`Cancelled`, `ProviderError`, `Timeout`, ...)."""
        return self._run(self.wait_op(generation, self._make, on_progress, timeout))

    def generate(
        self,
        prompt: str | None = None,
        *,
        request: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        on_submit: Callable[[Generation], Any] | None = None,
        **settings: Any,
    ) -> Generation:
        """Submit and wait, never running more generations at once than the account allows.
        `hires=2` (or a dict: scale, upscaler, steps, denoising_strength, ...) adds a hires
        fix."""
        body = build_body(prompt, request, **settings)
        return self._generate(body, on_progress, timeout, on_submit)

    def edit(
        self,
        image: Any,
        prompt: str | None = None,
        mask: Any = None,
        strength: float | None = 0.75,
        *,
        request: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        on_submit: Callable[[Generation], Any] | None = None,
        **settings: Any,
    ) -> Generation:
        """Image to image, as generate(): `image` (and `mask`: white repaints) a path or
        bytes; `strength` is denoising_strength; settings as generate's, plus mask_blur,
        inpainting_fill, resize_mode, inpaint_full_res, ... (docs/image-to-image.md)."""
        body = build_edit(image, prompt, mask, strength, request, **settings)
        return self._generate(body, on_progress, timeout, on_submit)

    def _generate(
        self,
        body: dict[str, Any],
        on_progress: ProgressCallback | None,
        timeout: float | None,
        on_submit: Callable[[Generation], Any] | None,
    ) -> Generation:
        with self._slots_for_generate():
            self._enter()
            try:
                generation = self._run(self.submit_op(body, self._make))
                if on_submit:
                    on_submit(generation)
                if on_progress:
                    on_progress(generation)
                return self.wait(generation, on_progress, timeout)
            finally:
                self._leave()

    def cancel(self, request_id: str | Generation) -> Generation:
        """Cancel a pending or running generation; its final status (failed, CANCELLED)."""
        request_id = getattr(request_id, "request_id", request_id)
        data = self._run(self.json_call("POST", f"/generations/{request_id}/cancel"))
        return self._make(data)

    def delete(self, request_id: str | Generation) -> None:
        """Delete an ended generation: its images' files and its record (the server keeps
        its charge in the ledger). Only its owner may; an active one is cancelled instead
        (use cancel() for that)."""
        request_id = getattr(request_id, "request_id", request_id)
        self._run(self.json_call("DELETE", f"/generations/{request_id}"))

    def loras(self, **filters: Any) -> list[dict[str, Any]]:
        """GET /loras/available; filters: tag, type, q, include_incompatible."""
        return self._run(self.json_call("GET", "/loras/available", self.loras_params(**filters)))

    def models(self) -> list[dict[str, Any]]:
        """GET /models: the checkpoints the server can render with."""
        return _listing(self._run(self.json_call("GET", "/models")), "models")

    def history(self, page: int = 1, per_page: int = 20, **filters: Any) -> dict[str, Any]:
        """GET /generations/history (Xano's paging shape); `items` are Generations."""
        data = self._run(
            self.json_call(
                "GET", "/generations/history", self.history_params(page, per_page, **filters)
            )
        )
        return _history(data, self._make)

    def account(self) -> dict[str, Any]:
        """GET /account: user, credits, active_generations, limits."""
        return self._run(self.json_call("GET", "/account"))

def _listing(data: Any, key: str) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return data[key]
    return data if isinstance(data, list) else []


def _history(data: dict[str, Any], make: Callable[[dict], Generation]) -> dict[str, Any]:
    return {**data, "items": [make(item) for item in data.get("items") or []]}
