"""create_app(settings): routes, lifespan (open store, start worker), error handlers.

Lifecycle, as in vLLM's API server: build the app (create_app, here), init its state when
it starts (state.open_state), serve (cli.py). Handlers stay thin: parse, call one piece,
render a view.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from server import views
from server.catalog import LoraQuery
from server.config import Settings
from server.contract import (
    CONTRACT_PREFIX,
    ApiError,
    ErrorCode,
    HistoryQuery,
    ImageGenerationRequest,
    SavePresetRequest,
    check_limits,
    not_found,
    parse,
)
from server.failures import cancelled_error
from server.state import AppState, open_state
from server.vault import EXTENSIONS, MEDIA_TYPES
from server.worker import Renderer

log = logging.getLogger("darkroom")

CANCEL_WAIT_SECONDS = 5.0


def state_of(request: Request) -> AppState:
    return request.app.state.darkroom


def links_for(request: Request) -> views.Links:
    state = state_of(request)
    base = (state.settings.public_url or str(request.base_url)).rstrip("/")
    if request.url.path.startswith(CONTRACT_PREFIX + "/"):
        base += CONTRACT_PREFIX
    return views.Links(base, state.vault, state.settings.url_ttl_hours * 3600)


async def json_body(request: Request) -> dict:
    raw = await request.body()
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


def generation_view(request: Request, row: dict) -> dict:
    state = state_of(request)
    images = state.store.images_of([row["id"]])[row["id"]]
    return views.generation(row, images, links_for(request), state.queue, state.admission)


async def generate(request: Request) -> Response:
    state = state_of(request)
    if state.draining:
        raise ApiError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The server is shutting down; try again shortly",
            {"reason": "draining"},
            503,
            {"Retry-After": str(round(state.settings.drain_timeout))},
        )
    body = parse(ImageGenerationRequest, await json_body(request))
    row = state.admission.submit(body)
    return JSONResponse(generation_view(request, row), status_code=202)


async def generation_status(request: Request) -> Response:
    request_id = request.path_params["request_id"]
    row = state_of(request).store.generation(request_id)
    if row is None:
        raise not_found("Generation", request_id)
    return JSONResponse(generation_view(request, row))


async def history(request: Request) -> Response:
    state = state_of(request)
    query = parse(HistoryQuery, dict(request.query_params))
    date_from = parse_date(query.date_from) if query.date_from else None
    rows, total = state.store.history(query.page, query.per_page, date_from, query.has_seed)
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
    query = parse(LoraQuery, dict(request.query_params))
    links = links_for(request)
    return JSONResponse(
        [views.lora_model(row, links) for row in state_of(request).catalog.available(query)]
    )


async def refresh_loras(request: Request) -> Response:
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
    body = parse(SavePresetRequest, await json_body(request))
    check_limits(body.loras, 1, state.settings.max_loras)
    state.catalog.resolve(body.loras)
    row, created = state.store.save_preset(
        body.name,
        body.settings.model_dump(mode="json", exclude_unset=True),
        [lora.model_dump(mode="json") for lora in body.loras],
        body.tags,
    )
    return JSONResponse(views.preset(row), status_code=201 if created else 200)


async def list_presets(request: Request) -> Response:
    return JSONResponse([views.preset(row) for row in state_of(request).store.presets()])


def readiness(state: AppState) -> dict[str, bool]:
    worker = state.worker
    return {
        "model_loaded": worker.state == "ready",
        "worker_alive": worker.alive,
        "worker_responsive": worker.stuck_job is None,
        "database_writable": state.store.writable(),
        "accepting_jobs": not state.draining,
    }


async def health(request: Request) -> Response:
    """Summary for people: 200 when ready, else 503 with what is wrong."""
    state = state_of(request)
    worker, checks = state.worker, readiness(state)
    ready = all(checks.values())
    if ready:
        status = "ok"
    elif state.draining:
        status = "draining"
    elif worker.state in ("loading", "failed"):
        status = worker.state
    else:
        status = "degraded"
    body = {
        "status": status,
        "model": worker.renderer.model,
        "device": worker.renderer.device,
        "queue_depth": state.queue.depth(),
        "worker_alive": worker.alive,
        "worker_restarts": worker.restarts,
        "checks": checks,
    }
    if worker.load_error:
        body["error"] = worker.load_error
    return JSONResponse(body, status_code=200 if ready else 503)


async def health_live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def health_ready(request: Request) -> Response:
    checks = readiness(state_of(request))
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


async def cancel_generation(request: Request) -> Response:
    state = state_of(request)
    request_id = request.path_params["request_id"]
    row = state.store.generation(request_id)
    if row is None:
        raise not_found("Generation", request_id)
    outcome = state.queue.cancel(row["id"])
    if outcome == "removed" or (outcome == "inactive" and row["status"] == "pending"):
        state.store.fail(row["id"], cancelled_error())
    elif outcome == "stopping":
        # The worker stops at the next denoising step: answer with the final state.
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while state.store.generation(request_id)["status"] == "processing":
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
    row = state.store.generation(request_id)
    body = generation_view(request, row)
    if outcome == "inactive" and row["status"] != "pending":
        body["message"] = f"Nothing to cancel: the generation is already {row['status']}"
    return JSONResponse(body)


def _image_file(request: Request, name: str, in_vault_only: bool) -> Response:
    token, _, suffix = name.partition(".")
    image = state_of(request).store.image_by_token(token)
    if image is None or (in_vault_only and not image["in_vault"]):
        raise not_found("Image", name)
    if suffix == "thumb.webp":
        file_name, media_type = image["thumb_name"], "image/webp"
    elif suffix == EXTENSIONS[image["format"]]:
        file_name, media_type = image["file_name"], MEDIA_TYPES[image["format"]]
    else:
        raise not_found("Image", name)
    cache = "public, max-age=31536000, immutable" if in_vault_only else "private, max-age=3600"
    return FileResponse(
        state_of(request).vault.path(file_name),
        media_type=media_type,
        headers={"Cache-Control": cache},
    )


async def vault_file(request: Request) -> Response:
    return _image_file(request, request.path_params["name"], in_vault_only=True)


async def signed_file(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        expires = int(request.query_params.get("expires", ""))
    except ValueError:
        expires = 0
    if not state_of(request).vault.verify(name, expires, request.query_params.get("sig", "")):
        raise ApiError(
            ErrorCode.NOT_FOUND, "This link is invalid or has expired", {"name": name}, 404
        )
    return _image_file(request, name, in_vault_only=False)


ROUTES = [
    Route("/image/generate", generate, methods=["POST"]),
    Route("/generations/history", history, methods=["GET"]),
    Route("/generations/{request_id}/status", generation_status, methods=["GET"]),
    Route("/loras/available", loras_available, methods=["GET"]),
    Route("/loras/refresh", refresh_loras, methods=["POST"]),
    Route("/loras/{lora_id:int}/thumbnail", lora_thumbnail, methods=["GET"]),
    Route("/presets/save", save_preset, methods=["POST"]),
    Route("/presets", list_presets, methods=["GET"]),
    Route("/generations/{request_id}/cancel", cancel_generation, methods=["POST"]),
    Route("/generations/{request_id}", cancel_generation, methods=["DELETE"]),
    Route("/health", health, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/vault/{name}", vault_file, methods=["GET"]),
    Route("/files/{name}", signed_file, methods=["GET"]),
]


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
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

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.darkroom = open_state(settings, renderer)
        try:
            yield
        finally:
            app.state.darkroom.close()

    return Starlette(
        routes=[*ROUTES, Mount(CONTRACT_PREFIX, routes=ROUTES)],
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
