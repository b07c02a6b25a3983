"""Every route, in one list: the contract's (served at the root and under its prefix) and the
operator's (health, metrics, OpenAPI, image files)."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api import admin
from server.api.account import account, list_presets, save_preset
from server.api.files import generation_input, signed_file, vault_file
from server.api.generations import (
    cancel_generation,
    delete_generation,
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
    samplers,
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


class TextConvertor(Convertor[str]):
    """A path segment without NUL: PostgreSQL's text cannot hold one, so a name or id with
    one matches no route (a 404 on both engines, as an unknown name is)."""

    regex = "[^/\x00]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", IdConvertor())
register_url_convertor("text", TextConvertor())


async def generation_resource(request: Request) -> Response:
    """/generations/{id}: GET its status and webhook, DELETE cancels it or, once ended,
    deletes it (one route, so a 405 lists both methods in Allow)."""
    if request.method == "DELETE":
        return await delete_generation(request)
    return await generation_detail(request)

ROUTES = [
    # Matched in order: the contract's polls (once a second per generation) first.
    Route("/generations/{request_id:text}/status", generation_status, methods=["GET"]),
    Route("/image/generate", generate, methods=["POST"]),
    Route("/generations/history", history, methods=["GET"]),
    Route("/generations/{request_id:text}/events", generation_events, methods=["GET"]),
    Route("/loras/available", loras_available, methods=["GET"]),
    Route("/loras/refresh", refresh_loras, methods=["POST"]),
    Route("/models", models_available, methods=["GET"]),
    Route("/models/refresh", refresh_models, methods=["POST"]),
    Route("/samplers", samplers, methods=["GET"]),
    Route("/loras/{lora_id:id}/thumbnail", lora_thumbnail, methods=["GET"]),
    Route("/presets/save", save_preset, methods=["POST"]),
    Route("/presets", list_presets, methods=["GET"]),
    Route("/account", account, methods=["GET"]),
    Route("/generations/{request_id:text}/cancel", cancel_generation, methods=["POST"]),
    Route("/generations/{request_id:text}/inputs/{field:text}", generation_input, methods=["GET"]),
    Route("/generations/{request_id:text}", generation_resource, methods=["GET", "DELETE"]),
    Route("/health", health, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/vault/{name:text}", vault_file, methods=["GET"]),
    Route("/files/{name:text}", signed_file, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/docs/{name:text}", docs_asset, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    # The operator's (administrators only): every user's queue, users, activity.
    Route("/admin/queue", admin.queue, methods=["GET"]),
    Route("/admin/generations/{request_id}/cancel", admin.cancel_any, methods=["POST"]),
    Route("/admin/users", admin.users, methods=["GET"]),
    Route("/admin/users", admin.add_user, methods=["POST"]),
    Route("/admin/users/{name}/credits", admin.add_credits, methods=["POST"]),
    Route("/admin/users/{name}/revoke", admin.revoke_tokens, methods=["POST"]),
    Route("/admin/activity", admin.activity, methods=["GET"]),
]
