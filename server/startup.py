"""The line `darkroom serve` prints once it is ready, with the URL to use."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("darkroom")


def base_url(host: str, port: int, public_url: str | None) -> str:
    if public_url:
        return public_url.rstrip("/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}"


async def announce_when_ready(app: Any, url: str, every: float = 0.25) -> None:
    """Log "Darkroom ready on URL (model M)" once /health would first answer 200."""
    from server.api.health import readiness

    while True:
        state = getattr(app.state, "darkroom", None)
        if state is not None and all(readiness(state).values()):
            worker = state.worker
            model = state.models.default_model if worker is None else worker.renderer.model
            log.info("Darkroom ready on %s (model %s); API docs at %s/docs", url, model, url)
            return
        await asyncio.sleep(every)
