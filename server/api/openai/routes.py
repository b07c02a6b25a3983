"""OpenAI's Images API under /v1: a client's base URL is `http://host:port/v1`."""

from __future__ import annotations

from starlette.routing import Route

from server.api.openai.edits import edits, variations
from server.api.openai.images import generations
from server.api.openai.models import get_model, list_models

OPENAI_PREFIX = "/v1"

OPENAI_ROUTES = [
    Route(f"{OPENAI_PREFIX}/images/generations", generations, methods=["POST"]),
    Route(f"{OPENAI_PREFIX}/images/edits", edits, methods=["POST"]),
    Route(f"{OPENAI_PREFIX}/images/variations", variations, methods=["POST"]),
    Route(f"{OPENAI_PREFIX}/models", list_models, methods=["GET"]),
    Route(f"{OPENAI_PREFIX}/models/{{model:path}}", get_model, methods=["GET"]),
]
