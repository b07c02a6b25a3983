"""GET /generations/{id}/events: the status object as Server-Sent Events, on every change.

With `?previews=true`, processing events carry `preview`: a small JPEG data URL of the
latents every few steps. Each event's id is the state it carries (status, queue place,
step, preview), so a client that
reconnects with Last-Event-ID gets the next change, not a replay. The stream ends after
the final state. Starlette cancels the generator when the client goes away, so a
disconnected client leaves nothing running (darkroom_event_streams counts open ones).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from server.api.offload import off_loop
from server.state import AppState, state_of

CHECK_SECONDS = 0.05  # how often the in-memory change counter is looked at
REFRESH_SECONDS = 1.0  # re-read the database at least this often
KEEPALIVE_SECONDS = 15.0
FINAL = ("completed", "failed")


def event_id(body: dict) -> str:
    place, step = body.get("queue_position") or 0, body.get("step") or 0
    return f"{body['status']}.{place}.{step}.{body.get('preview_step') or 0}"


def stream_events(
    request: Request, generation_id: int, view: Callable[[dict], dict]
) -> Response:
    state = state_of(request)
    last_id = request.headers.get("last-event-id")
    if request.query_params.get("previews", "").lower() in ("1", "true", "yes"):
        state.queue.want_previews(generation_id)
    return StreamingResponse(
        _events(state, generation_id, view, last_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    state: AppState, generation_id: int, view: Callable[[dict], dict], last_id: str | None
) -> AsyncIterator[str]:
    state.metrics.event_streams.inc()
    try:
        sent, seen, checked = last_id, -1, 0.0
        quiet_since = time.monotonic()
        while True:
            now = time.monotonic()
            if state.queue.version != seen or now - checked >= REFRESH_SECONDS:
                seen, checked = state.queue.version, now
                body = await off_loop(_read, state, generation_id, view)
                if event_id(body) != sent:
                    sent = event_id(body)
                    quiet_since = now
                    yield f"id: {sent}\nevent: status\ndata: {json.dumps(body)}\n\n"
                if body["status"] in FINAL:
                    return
            if now - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = now
                yield ": keep-alive\n\n"
            await asyncio.sleep(CHECK_SECONDS)
    finally:
        state.metrics.event_streams.dec()


def _read(state: AppState, generation_id: int, view: Callable[[dict], dict]) -> dict:
    row = state.store.generation_by_id(generation_id)
    assert row is not None
    return view(row)
