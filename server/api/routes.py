"""Every route, in one list: the contract's (served at the root and under its prefix) and the
operator's (health, metrics, OpenAPI, image files)."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.account import account, list_presets, save_preset
from server.api.files import generation_input, signed_file, vault_file
from server.api.generations import (
    cancel_generation,
    generate,
    generation_events,
    generation_status,
    history,
)
from server.api.health import health, health_live, health_ready
from server.api.library import (
    lora_thumbnail,
    loras_available,
    models_available,
    refresh_loras,
    refresh_models,
)
from server.api.metrics import metrics_endpoint
from server.api.openapi import docs, docs_asset, openapi_json
from server.api.webhooks import generation_detail


class IdConvertor(Convertor[int]):
    """A database id: digits that fit a 64-bit integer. A longer one matches no route, so
    it is a 404 like any unknown id rather than an overflow in the database driver."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())


async def generation_resource(request: Request) -> Response:
    """/generations/{id}: GET its status and webhook, DELETE cancels it (one route, so a
    405 lists both methods in Allow)."""
    if request.method == "DELETE":
        return await cancel_generation(request)
    return await generation_detail(request)

ROUTES = [
    # Matched in order: the contract's polls (once a second per generation) first.
    Route("/generations/{request_id}/status", generation_status, methods=["GET"]),
    Route("/image/generate", generate, methods=["POST"]),
    Route("/generations/history", history, methods=["GET"]),
    Route("/generations/{request_id}/events", generation_events, methods=["GET"]),
    Route("/loras/available", loras_available, methods=["GET"]),
    Route("/loras/refresh", refresh_loras, methods=["POST"]),
    Route("/models", models_available, methods=["GET"]),
    Route("/models/refresh", refresh_models, methods=["POST"]),
    Route("/loras/{lora_id:id}/thumbnail", lora_thumbnail, methods=["GET"]),
    Route("/presets/save", save_preset, methods=["POST"]),
    Route("/presets", list_presets, methods=["GET"]),
    Route("/account", account, methods=["GET"]),
    Route("/generations/{request_id}/cancel", cancel_generation, methods=["POST"]),
    Route("/generations/{request_id}/inputs/{field}", generation_input, methods=["GET"]),
    Route("/generations/{request_id}", generation_resource, methods=["GET", "DELETE"]),
    Route("/health", health, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/vault/{name}", vault_file, methods=["GET"]),
    Route("/files/{name}", signed_file, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/docs/{name}", docs_asset, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
