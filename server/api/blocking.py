"""A blocking call's wait: AUTOMATIC1111's and OpenAI's APIs answer with the images, so
the request waits for its generation. A caller that goes away first cancels it: nothing
is rendered for nobody, and its hold is released."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from server.api.offload import off_loop
from server.state import AppState

POLL_SECONDS = 0.05
FINAL = ("completed", "failed")


class CallerGone(Exception):
    """The client closed the connection before its generation ended (it was cancelled)."""


async def wait_for(request: Request, state: AppState, generation_id: int) -> dict:
    """The generation's row once it has ended; cancels it if the caller goes away."""
    try:
        while True:
            row = await off_loop(state.store.generation_by_id, generation_id)
            assert row is not None
            if row["status"] in FINAL:
                return row
            if await request.is_disconnected():
                await off_loop(state.cancel, generation_id)
                raise CallerGone
            await asyncio.sleep(POLL_SECONDS)
    except asyncio.CancelledError:
        state.cancel(generation_id)
        raise
