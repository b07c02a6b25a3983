"""`stream: true`: the generation as OpenAI's Server-Sent Events, which the `openai`
package parses: `image_generation.partial_image` (Darkroom's latent previews, at most
`partial_images` of them, spread over the steps) and one `image_generation.completed` per
image (`image_edit.*` for edits). A failure is an `error` event. A client that goes away
cancels the generation."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from server.api.blocking import FINAL, POLL_SECONDS
from server.api.offload import off_loop
from server.api.openai.answers import failed, usage
from server.api.openai.params import ImageParams
from server.state import AppState

KEEPALIVE_SECONDS = 15.0


def stream_images(
    request: Request, state: AppState, row: dict[str, Any], params: ImageParams, text: str
) -> Response:
    if params.partial_images:
        state.queue.want_previews(row["id"])
    return StreamingResponse(
        _events(state, row["id"], params, text),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    state: AppState, generation_id: int, params: ImageParams, text: str
) -> AsyncIterator[str]:
    common = {
        "background": "opaque",
        "output_format": params.output_format,
        "quality": params.quality,
        "size": f"{params.width}x{params.height}",
    }
    sent, quiet_since, finished = 0, time.monotonic(), False
    try:
        while True:
            row = await off_loop(state.store.generation_by_id, generation_id)
            assert row is not None
            if row["status"] in FINAL:
                finished = True
                break
            job = state.queue.progress_of(generation_id)
            if job is not None and job.preview and sent < params.partial_images:
                # The k-th partial image is the first preview past (k+1)/(N+1) of the steps.
                due = job.total_steps * (sent + 1) / (params.partial_images + 1)
                if job.preview_step >= due:
                    picture = await off_loop(_encode, job.preview, params)
                    event = {"type": f"{params.event}.partial_image", "b64_json": picture,
                             "partial_image_index": sent, "created_at": int(time.time()),
                             **common}  # fmt: skip
                    sent += 1
                    quiet_since = time.monotonic()
                    yield _sse(event["type"], event)
            if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)
    finally:
        if not finished:  # the client went away: nobody will read the images
            state.cancel(generation_id)
    failure = failed(row)
    if failure is not None:
        yield _sse("error", failure.body())
        return
    images = (await off_loop(state.store.images_of, [generation_id]))[generation_id]
    for image in images:
        raw = await off_loop(state.vault.path(image["file_name"]).read_bytes)
        event = {"type": f"{params.event}.completed",
                 "b64_json": base64.b64encode(raw).decode("ascii"),
                 "created_at": int(time.time()), "usage": usage(text), **common}  # fmt: skip
        yield _sse(event["type"], event)


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _encode(preview: str, params: ImageParams) -> str:
    """A latent preview (a small JPEG data URL) at the requested size and format."""
    raw = base64.b64decode(preview.partition(",")[2])
    picture = Image.open(io.BytesIO(raw)).convert("RGB")
    picture = picture.resize((params.width, params.height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    fmt = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[params.output_format]
    quality = {} if fmt == "PNG" else {"quality": params.output_compression}
    picture.save(out, fmt, **quality)
    return base64.b64encode(out.getvalue()).decode("ascii")
