"""create_app(settings): the whole server wired in one place: routes, middleware, the
exception map and the lifespan that opens and closes its state.

Lifecycle, as in vLLM's API server: build the app (create_app, here), init its state when
it starts (state.open_state), serve (cli.py). Handlers (api/) stay thin: parse, call one
piece, render a view.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount

from pipelines.spec import Renderer
from server.api.a1111.routes import A1111_ROUTES
from server.api.errors import EXCEPTION_HANDLERS
from server.api.logs import RequestLog
from server.api.metrics import StateCollector
from server.api.openai.routes import OPENAI_ROUTES
from server.api.paths import SingleSlashes
from server.api.routes import ROUTES
from server.api.webhooks import WebhookCollector
from server.config import Settings
from server.console.routes import CONSOLE_ROUTES
from server.contract import CONTRACT_PREFIX
from server.metrics import Metrics
from server.state import open_state


def create_app(
    settings: Settings, renderer: Renderer | list[Renderer] | None = None
) -> Starlette:
    """The whole server, wired in one place. `renderer` replaces the SDXL pipeline (tests);
    a list of them is one device each, as --devices makes."""

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.darkroom = state = open_state(settings, renderer, metrics)
        metrics.watch(StateCollector(state))
        metrics.watch(WebhookCollector(state.figures))
        try:
            yield
        finally:
            app.state.darkroom.close()

    return Starlette(
        # AUTOMATIC1111's and OpenAI's APIs and the console at the root only.
        routes=[
            *ROUTES,
            *A1111_ROUTES,
            *OPENAI_ROUTES,
            *CONSOLE_ROUTES,
            Mount(CONTRACT_PREFIX, routes=ROUTES),
        ],
        lifespan=lifespan,
        middleware=[Middleware(SingleSlashes), Middleware(RequestLog, metrics=metrics)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
