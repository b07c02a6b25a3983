"""create_app(settings): routes, lifespan (open store, start worker), error handlers.

Lifecycle, as in vLLM's API server: build the app (create_app, here), init its state when
it starts (state.open_state), serve (cli.py). Handlers stay thin: parse, call one piece,
render a view.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from server import views
from server.accounts import User
from server.catalog import LoraQuery
from server.config import Settings
from server.contract import (
    CONTRACT_PREFIX,
    MAX_IMAGES,
    ApiError,
    ErrorCode,
    HistoryQuery,
    ImageGenerationRequest,
    SavePresetRequest,
    check_lengths,
    check_limits,
    not_found,
    parse,
)
from server.events import stream_events
from server.failures import cancelled_error
from server.files import signed_file, vault_file
from server.health import health, health_live, health_ready
from server.limits import retry_after
from server.logs import RequestLog
from server.metrics import Metrics, metrics_endpoint
from server.openapi import docs, openapi_json
from server.state import open_state, state_of
from server.worker import Renderer

log = logging.getLogger("darkroom")


_bases: dict[tuple[Any, ...], str] = {}


def request_base(request: Request) -> str:
    """The URL the server was reached at, as Starlette's base_url reads it; cached, since
    every poll needs it and Starlette builds it by parsing the whole URL each time."""
    scope = request.scope
    host = request.headers.get("host")
    server = scope.get("server")
    key = (scope["scheme"], tuple(server) if server else None, scope.get("root_path"), host)
    base = _bases.get(key)
    if base is None:
        if len(_bases) >= 64:  # the Host header is the client's: keep the cache small
            _bases.clear()
        base = _bases[key] = str(request.base_url).rstrip("/")
    return base


def links_for(request: Request) -> views.Links:
    state = state_of(request)
    base = (state.settings.public_url or request_base(request)).rstrip("/")
    if request.scope["path"].startswith(CONTRACT_PREFIX + "/"):
        base += CONTRACT_PREFIX
    return views.Links(base, state.vault, state.settings.url_ttl_hours * 3600)


def user_of(request: Request) -> User:
    """Who the request acts as (raises 401 UNAUTHORIZED)."""
    forwarded = "forwarded" in request.headers or "x-forwarded-for" in request.headers
    return state_of(request).auth.user(request.headers.get("authorization"), forwarded)


async def json_body(request: Request) -> dict:
    limit = state_of(request).settings.max_body_bytes
    too_large = ApiError(
        ErrorCode.LIMIT_EXCEEDED,
        f"Request body is larger than {limit} bytes",
        {"field": "body", "limit_bytes": limit},
        413,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Request body is not valid JSON: {exc}",
            {"fields": {"body": "not valid JSON"}},
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "Request body must be a JSON object",
            {"fields": {"body": f"expected an object, got {type(data).__name__}"}},
        )
    return data


def own_generation(request: Request, user: User) -> dict:
    """The generation named in the path, if it is the user's: others' are as unknown."""
    request_id = request.path_params["request_id"]
    row = state_of(request).store.generation(request_id, user.id)
    if row is None:
        raise not_found("Generation", request_id)
    return row


def generation_view(request: Request, row: dict) -> dict:
    state = state_of(request)
    # Only a completed generation has images: polls of queued or running ones skip the query.
    images = state.store.images_of([row["id"]])[row["id"]] if row["status"] == "completed" else []
    return views.generation(row, images, links_for(request), state.queue, state.admission)


async def generate(request: Request) -> Response:
    state = state_of(request)
    user = user_of(request)
    if state.draining:
        raise ApiError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The server is shutting down; try again shortly",
            {"reason": "draining"},
            503,
            {"Retry-After": str(round(state.settings.drain_timeout))},
        )
    body = parse(ImageGenerationRequest, await json_body(request))
    row = state.admission.submit(body, user)
    request.state.request_id = row["request_id"]
    return JSONResponse(generation_view(request, row), status_code=202)


async def generation_status(request: Request) -> Response:
    user = user_of(request)
    wait = state_of(request).polls.wait(user.id, request.path_params["request_id"])
    if wait > 0:
        rate = state_of(request).settings.poll_rate
        raise ApiError(
            ErrorCode.LIMIT_EXCEEDED,
            f"Polling too fast: at most {rate:g} status request(s) per second per generation",
            {"field": "polling", "limit_per_second": rate, "retry_after_seconds": round(wait, 2)},
            429,
            {"Retry-After": retry_after(wait)},
        )
    return JSONResponse(generation_view(request, own_generation(request, user)))


async def generation_events(request: Request) -> Response:
    row = own_generation(request, user_of(request))
    return stream_events(request, row["id"], lambda row: generation_view(request, row))


async def history(request: Request) -> Response:
    state = state_of(request)
    user = user_of(request)
    query = parse(HistoryQuery, dict(request.query_params))
    date_from = parse_date(query.date_from) if query.date_from else None
    rows, total = state.store.history(
        user.id, query.page, query.per_page, date_from, query.has_seed
    )
    images = state.store.images_of([row["id"] for row in rows])
    links = links_for(request)
    items = [
        views.history_item(row, images[row["id"]], links, state.queue, state.admission)
        for row in rows
    ]
    page_total = -(-total // query.per_page)
    return JSONResponse(
        {
            "items": items,
            "itemsReceived": len(items),
            "curPage": query.page,
            "nextPage": query.page + 1 if query.page < page_total else None,
            "prevPage": query.page - 1 if query.page > 1 else None,
            "offset": (query.page - 1) * query.per_page,
            "perPage": query.per_page,
            "itemsTotal": total,
            "pageTotal": page_total,
        }
    )


def parse_date(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"date_from: not an ISO 8601 date: {text!r}",
            {"fields": {"date_from": "expected YYYY-MM-DD or an ISO 8601 date-time"}},
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


async def loras_available(request: Request) -> Response:
    user_of(request)
    query = parse(LoraQuery, dict(request.query_params))
    links = links_for(request)
    return JSONResponse(
        [views.lora_model(row, links) for row in state_of(request).catalog.available(query)]
    )


async def refresh_loras(request: Request) -> Response:
    user_of(request)
    # Hashing new files and checking them against the model takes a while: not on the loop.
    summary = await run_in_threadpool(state_of(request).catalog.refresh)
    return JSONResponse(summary.as_json())


async def lora_thumbnail(request: Request) -> Response:
    lora_id = request.path_params["lora_id"]
    path = state_of(request).catalog.preview_path(lora_id)
    if path is None:
        raise not_found("Thumbnail of LoRA", lora_id)
    return FileResponse(path)


async def save_preset(request: Request) -> Response:
    state = state_of(request)
    user = user_of(request)
    body = parse(SavePresetRequest, await json_body(request))
    check_limits(body.loras, 1, state.settings.max_loras)
    check_lengths("", body.settings.negative_prompt, state.settings.max_prompt_chars)
    state.catalog.resolve(body.loras)
    row, created = state.store.save_preset(
        user.id,
        body.name,
        body.settings.model_dump(mode="json", exclude_unset=True),
        [lora.model_dump(mode="json") for lora in body.loras],
        body.tags,
    )
    return JSONResponse(views.preset(row), status_code=201 if created else 200)


async def list_presets(request: Request) -> Response:
    user = user_of(request)
    return JSONResponse([views.preset(row) for row in state_of(request).store.presets(user.id)])


async def account(request: Request) -> Response:
    """Who the token belongs to, their credits and limits."""
    state, user = state_of(request), user_of(request)
    with state.store.reading() as db:
        active = state.store.active_count(db, user.id)
    return JSONResponse(
        {
            "user": user.name,
            "open_mode": user.builtin,
            "credits": state.accounts.balance(user.id).as_json(),
            "active_generations": active,
            "limits": {
                "concurrent_generations": state.settings.max_active_per_user,
                "polls_per_second": state.settings.poll_rate,
                "images_per_request": MAX_IMAGES,
                "loras_per_request": state.settings.max_loras,
                "prompt_characters": state.settings.max_prompt_chars,
                "body_bytes": state.settings.max_body_bytes,
            },
        }
    )


async def cancel_generation(request: Request) -> Response:
    state = state_of(request)
    row = own_generation(request, user_of(request))
    # A running job stops at its next step (or, in a batch, is dropped when it ends); it is
    # failed now, so the answer is final and nothing it produces is recorded or charged.
    state.queue.cancel(row["id"])
    cancelled = state.store.fail(row["id"], cancelled_error())
    row = state.store.generation_by_id(row["id"])
    body = generation_view(request, row)
    if not cancelled:
        body["message"] = f"Nothing to cancel: the generation is already {row['status']}"
    return JSONResponse(body)


ROUTES = [
    # Matched in order: the contract's polls (once a second per generation) first.
    Route("/generations/{request_id}/status", generation_status, methods=["GET"]),
    Route("/image/generate", generate, methods=["POST"]),
    Route("/generations/history", history, methods=["GET"]),
    Route("/generations/{request_id}/events", generation_events, methods=["GET"]),
    Route("/loras/available", loras_available, methods=["GET"]),
    Route("/loras/refresh", refresh_loras, methods=["POST"]),
    Route("/loras/{lora_id:int}/thumbnail", lora_thumbnail, methods=["GET"]),
    Route("/presets/save", save_preset, methods=["POST"]),
    Route("/presets", list_presets, methods=["GET"]),
    Route("/account", account, methods=["GET"]),
    Route("/generations/{request_id}/cancel", cancel_generation, methods=["POST"]),
    Route("/generations/{request_id}", cancel_generation, methods=["DELETE"]),
    Route("/health", health, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/vault/{name}", vault_file, methods=["GET"]),
    Route("/files/{name}", signed_file, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {
        401: ErrorCode.UNAUTHORIZED,
        404: ErrorCode.NOT_FOUND,
        405: ErrorCode.METHOD_NOT_ALLOWED,
    }.get(
        exc.status_code, ErrorCode.VALIDATION_ERROR
    )
    error = ApiError(
        code, str(exc.detail), {"path": request.url.path}, exc.status_code, dict(exc.headers or {})
    )
    return await api_error(request, error)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = ApiError(ErrorCode.INTERNAL_ERROR, "Internal server error", {}, 500)
    return await api_error(request, error)


def create_app(settings: Settings, renderer: Renderer | None = None) -> Starlette:
    """The whole server, wired in one place. `renderer` replaces the SDXL pipeline (tests)."""

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.darkroom = open_state(settings, renderer, metrics)
        try:
            yield
        finally:
            app.state.darkroom.close()

    return Starlette(
        routes=[*ROUTES, Mount(CONTRACT_PREFIX, routes=ROUTES)],
        lifespan=lifespan,
        middleware=[Middleware(RequestLog, metrics=metrics)],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
