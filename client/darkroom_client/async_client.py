"""`AsyncClient`: Client's methods, awaited (darkroom_client.client has the blocking one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from darkroom_client._core import (
    Call,
    CloseEvents,
    NextEvent,
    Op,
    OpenEvents,
    Sleep,
    SSEDecoder,
    concurrency_from,
)
from darkroom_client.client import (
    Client,
    ProgressCallback,
    _history,
    _listing,
    _Shared,
)
from darkroom_client.errors import TransportError
from darkroom_client.images import build_body, build_edit
from darkroom_client.models import Generation, parse_generation


class AsyncClient(_Shared):
    """The same as `Client`, with `await`: `async with AsyncClient() as client: ...`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, token, **options)
        self._setup()
        self._http = http or httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)
        self._slots: asyncio.Semaphore | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _run(self, op: Op) -> Any:
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
                        response = await self._http.request(
                            effect.method,
                            effect.url,
                            params=effect.params,
                            json=effect.json,
                            headers={**self._headers_for(effect.url), **(effect.headers or {})},
                        )
                        value = self._answer(response)
                    elif isinstance(effect, Sleep):
                        await asyncio.sleep(effect.seconds)
                    elif isinstance(effect, OpenEvents):
                        headers = {**self._headers_for(effect.url), "Accept": "text/event-stream"}
                        timeout = httpx.Timeout(self.timeout, read=effect.read_timeout())
                        stream = self._http.stream(
                            "GET", effect.url, headers=headers, timeout=timeout
                        )
                        response = await stream.__aenter__()
                        value = self._is_event_stream(response)
                        if value:
                            lines, decoder = response.aiter_lines(), SSEDecoder()
                        else:
                            await stream.__aexit__(None, None, None)
                            stream = None
                    elif isinstance(effect, NextEvent):
                        async for line in lines:
                            value = effect.feed(decoder, line)
                            if value is not None:
                                break
                    elif isinstance(effect, CloseEvents) and stream is not None:
                        await stream.__aexit__(None, None, None)
                        stream = None
                except httpx.TransportError as exc:
                    error = TransportError(f"{type(exc).__name__}: {exc}")
        finally:
            if stream is not None:
                await stream.__aexit__(None, None, None)
            op.close()

    def _make(self, data: dict[str, Any]) -> Generation:
        return parse_generation(
            data, fetch=self._fetch_blocking, afetch=lambda url: self._run(self.fetch_op(url))
        )

    def _fetch_blocking(self, url: str) -> bytes:
        with Client(self.url, self.token, timeout=self.timeout) as client:
            return client._run(client.fetch_op(url))

    async def _slots_for_generate(self) -> asyncio.Semaphore:
        if self._slots is None:
            if self.concurrency is None:
                self.concurrency = concurrency_from(await self.account())
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    async def submit(
        self, prompt: str | None = None, *, request: dict[str, Any] | None = None, **settings: Any
    ) -> Generation:
        return await self._run(
            self.submit_op(build_body(prompt, request, **settings), self._make)
        )

    async def status(self, request_id: str) -> Generation:
        return await self._run(self.status_op(request_id, self._make))

    async def wait(
        self,
        generation: Generation | str,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Generation:
        return await self._run(self.wait_op(generation, self._make, on_progress, timeout))

    async def generate(
        self,
        prompt: str | None = None,
        *,
        request: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        on_submit: Callable[[Generation], Any] | None = None,
        **settings: Any,
    ) -> Generation:
        body = build_body(prompt, request, **settings)
        return await self._generate(body, on_progress, timeout, on_submit)

    async def edit(
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
        body = build_edit(image, prompt, mask, strength, request, **settings)
        return await self._generate(body, on_progress, timeout, on_submit)

    async def _generate(
        self,
        body: dict[str, Any],
        on_progress: ProgressCallback | None,
        timeout: float | None,
        on_submit: Callable[[Generation], Any] | None,
    ) -> Generation:
        async with await self._slots_for_generate():
            self._enter()
            try:
                generation = await self._run(self.submit_op(body, self._make))
                if on_submit:
                    on_submit(generation)
                if on_progress:
                    on_progress(generation)
                return await self.wait(generation, on_progress, timeout)
            finally:
                self._leave()

    async def cancel(self, request_id: str | Generation) -> Generation:
        request_id = getattr(request_id, "request_id", request_id)
        data = await self._run(self.json_call("POST", f"/generations/{request_id}/cancel"))
        return self._make(data)

    async def delete(self, request_id: str | Generation) -> None:
        request_id = getattr(request_id, "request_id", request_id)
        await self._run(self.json_call("DELETE", f"/generations/{request_id}"))

    async def loras(self, **filters: Any) -> list[dict[str, Any]]:
        return await self._run(
            self.json_call("GET", "/loras/available", self.loras_params(**filters))
        )

    async def models(self) -> list[dict[str, Any]]:
        return _listing(await self._run(self.json_call("GET", "/models")), "models")

    async def history(self, page: int = 1, per_page: int = 20, **filters: Any) -> dict[str, Any]:
        data = await self._run(
            self.json_call(
                "GET", "/generations/history", self.history_params(page, per_page, **filters)
            )
        )
        return _history(data, self._make)

    async def account(self) -> dict[str, Any]:
        return await self._run(self.json_call("GET", "/account"))
